"""Every filter and scorer, table-driven: exact values on tiny records."""

from __future__ import annotations

import random

import pytest

from kvferry.services.router.placement.filters import (
    CompatibleLayout,
    Healthy,
    KVCapacity,
    MaxInFlight,
    NotExcluded,
    WorkerFilter,
)
from kvferry.services.router.placement.scorers import (
    DecodePrefixHits,
    FreeKVBlocks,
    PrefixHits,
    QueuedPrefillTokens,
    RequestFacts,
    RunningLoad,
    TransferTime,
    WorkerScorer,
)
from kvferry.services.router.placement.types import PlacementRequest
from kvferry.services.router.workers import WorkerId, WorkerRecord

from .placement_factories import D, M, P, worker

REQUEST = PlacementRequest(100, exclude=frozenset({WorkerId("bad")}))

FILTER_CASES = [
    # (name, filter, worker, accepted)
    ("healthy keeps a healthy worker", Healthy(), worker("a", D), True),
    ("healthy drops a draining worker", Healthy(), worker("a", D, draining=True), False),
    ("not_excluded keeps others", NotExcluded(), worker("a", D), True),
    ("not_excluded drops a failed worker", NotExcluded(), worker("bad", D), False),
    ("max_in_flight below the limit", MaxInFlight(limit=2), worker("a", D, in_flight=1), True),
    ("max_in_flight at the limit", MaxInFlight(limit=2), worker("a", D, in_flight=2), False),
    ("kv_capacity with room", KVCapacity(min_free_blocks=5), worker("a", D, free=5), True),
    ("kv_capacity too full", KVCapacity(min_free_blocks=5), worker("a", D, free=4), False),
    (
        "kv_capacity checks mixed workers",
        KVCapacity(min_free_blocks=5),
        worker("a", M, free=0),
        False,
    ),
    (
        "kv_capacity ignores prefill workers",
        KVCapacity(min_free_blocks=5),
        worker("a", P, free=0),
        True,
    ),
]


@pytest.mark.parametrize(
    ("flt", "record", "accepted"), [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
def test_worker_filters(flt: WorkerFilter, record: WorkerRecord, accepted: bool) -> None:
    assert flt.accepts(record, REQUEST) is accepted


PAIR_CASES = [
    ("same layout", worker("p", P), worker("d", D), True),
    ("block sizes differ", worker("p", P, block_size=16), worker("d", D, block_size=32), False),
    (
        "bytes per block differ",
        worker("p", P, kv_bytes_per_block=10),
        worker("d", D, kv_bytes_per_block=20),
        False,
    ),
    ("unreported layout passes", worker("p", P, block_size=0), worker("d", D), True),
]


@pytest.mark.parametrize(
    ("prefill", "decode", "accepted"), [c[1:] for c in PAIR_CASES], ids=[c[0] for c in PAIR_CASES]
)
def test_compatible_layout(prefill: WorkerRecord, decode: WorkerRecord, accepted: bool) -> None:
    assert CompatibleLayout().accepts_pair(prefill, decode) is accepted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "whole number"),
    ],
)
def test_bad_filter_params(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaxInFlight(**kwargs)  # type: ignore[arg-type]


FACTS = RequestFacts(num_prompt_tokens=160, num_blocks=10, block_size=16)
NO_BLOCKS = RequestFacts(num_prompt_tokens=10, num_blocks=0, block_size=16)

SCORER_CASES = [
    # (name, scorer, worker, hits, facts, expected score)
    ("prefix hits: none", PrefixHits(), worker("a", P), 0, FACTS, 0.0),
    ("prefix hits: 4 of 10", PrefixHits(), worker("a", P), 4, FACTS, 0.4),
    ("prefix hits: all", PrefixHits(), worker("a", P), 10, FACTS, 1.0),
    ("prefix hits: no full block", PrefixHits(), worker("a", P), 0, NO_BLOCKS, 0.0),
    ("decode prefix hits: 5 of 10", DecodePrefixHits(), worker("a", D), 5, FACTS, 0.5),
    ("queued tokens: idle", QueuedPrefillTokens(), worker("a", P), 0, FACTS, 1.0),
    (
        "queued tokens: the report at the scale halves",
        QueuedPrefillTokens(token_scale=1000),
        worker("a", P, prefill_tokens=1000),
        0,
        FACTS,
        0.5,
    ),
    (
        "queued tokens: fresh in-flight count beats a stale report",
        QueuedPrefillTokens(token_scale=1000, in_flight_tokens=500),
        worker("a", P, prefill_tokens=0, in_flight=6),
        0,
        FACTS,
        0.25,
    ),
    (
        "queued tokens: the prompt tokens the router sent there beat both",
        QueuedPrefillTokens(token_scale=1000, in_flight_tokens=500),
        worker("a", P, prefill_tokens=1000, in_flight=2, in_flight_tokens=3000),
        0,
        FACTS,
        0.25,
    ),
    (
        "queued tokens: a short prompt still costs the per-request floor",
        QueuedPrefillTokens(token_scale=1000, in_flight_tokens=500),
        worker("a", P, prefill_tokens=0, in_flight=2, in_flight_tokens=40),
        0,
        FACTS,
        0.5,
    ),
    ("free kv: half", FreeKVBlocks(), worker("a", D, free=50, total=100), 0, FACTS, 0.5),
    ("free kv: no pool reported", FreeKVBlocks(), worker("a", D, free=0, total=0), 0, FACTS, 0.0),
    ("running load: idle", RunningLoad(), worker("a", D), 0, FACTS, 1.0),
    (
        "running load: running + waiting + in flight",
        RunningLoad(load_scale=4),
        worker("a", D, running=2, waiting=1, in_flight=1),
        0,
        FACTS,
        0.5,
    ),
]


@pytest.mark.parametrize(
    ("scorer", "record", "hits", "facts", "expected"),
    [c[1:] for c in SCORER_CASES],
    ids=[c[0] for c in SCORER_CASES],
)
def test_worker_scorers(
    scorer: WorkerScorer, record: WorkerRecord, hits: int, facts: RequestFacts, expected: float
) -> None:
    score = scorer.score(record, hits, facts)
    assert score == pytest.approx(expected)
    assert 0.0 <= score <= 1.0


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0.0, 1.0), (0.01, 0.5), (0.03, 0.25), (1e9, 0.0)]
)
def test_transfer_time_scorer(seconds: float, expected: float) -> None:
    assert TransferTime(time_scale_s=0.01).score_pair(seconds) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: QueuedPrefillTokens(token_scale=0), "token_scale"),
        (lambda: QueuedPrefillTokens(in_flight_tokens=-1), "in_flight_tokens"),
        (lambda: RunningLoad(load_scale=0), "load_scale"),
        (lambda: TransferTime(time_scale_s=-1), "time_scale_s"),
    ],
)
def test_bad_scorer_params(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("seed", range(20))
def test_each_scorers_add_many_is_its_score_summed(seed: int) -> None:
    """The pipeline's fast path (`add_many`, one comprehension per scorer) equals the
    straightforward `totals[i] + weight * score(worker i)` on random workers."""
    rng = random.Random(seed)
    scorers: list[WorkerScorer] = [
        PrefixHits(),
        DecodePrefixHits(),
        QueuedPrefillTokens(token_scale=rng.choice([1.0, 512.0, 4096.0])),
        QueuedPrefillTokens(in_flight_tokens=rng.choice([0.0, 100.0])),
        FreeKVBlocks(),
        RunningLoad(load_scale=rng.choice([0.5, 8.0])),
    ]
    records = []
    for i in range(rng.randrange(0, 12)):
        total = rng.choice([0, 1, 100])
        records.append(
            worker(
                f"w{i}",
                rng.choice([P, D, M]),
                running=rng.randrange(50),
                waiting=rng.randrange(5),
                prefill_tokens=rng.randrange(20_000),
                free=rng.randrange(total + 1),
                total=total,
                in_flight=rng.randrange(6),
                in_flight_tokens=rng.choice([0, rng.randrange(40_000)]),
            )
        )
    blocks = rng.choice([0, 1, 10, 200])
    facts = RequestFacts(blocks * 16 + rng.randrange(16), blocks, 16)
    hits = [rng.randrange(blocks + 3) for _ in records]  # more hits than blocks is clamped
    for scorer in scorers:
        totals = [rng.random() for _ in records]
        weight = rng.choice([0.25, 1.0, 2.0])
        expected = [
            t + weight * scorer.score(w, n, facts)
            for t, w, n in zip(totals, records, hits, strict=True)
        ]
        got = scorer.add_many(totals, weight, records, hits, facts)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), scorer.name
        assert WorkerScorer.add_many(scorer, totals, weight, records, hits, facts) == (
            pytest.approx(expected, rel=1e-12, abs=1e-12)
        )
