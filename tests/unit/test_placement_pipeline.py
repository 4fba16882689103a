"""The pipeline end to end on tiny worlds: joint pair choice, conditional disaggregation,
topology, measured bandwidth, pickers, and candidate drawing in a large cluster."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import replace

import pytest

from kvferry.services.router.placement import (
    BandwidthTable,
    NoEligibleWorkersError,
    PlacementConfig,
    PlacementRequest,
    PluginSpec,
    StaticView,
    build_policy,
    named_config,
)
from kvferry.services.router.placement.joint import Joint, Scored
from kvferry.services.router.placement.scorers import RequestFacts, Side
from kvferry.services.router.workers import WorkerId, WorkerRecord
from kvferry.topology import Tier, tier_between

from .placement_factories import BLOCK, KV_BLOCK_BYTES, D, M, P, worker

_WEIGHTS = {"prefill": 3.0, "decode": 2.25, "pair": 1.0}
HASHES = tuple(range(1000, 1020))  # a 20-block (320-token) prompt
LONG = PlacementRequest(len(HASHES) * BLOCK, HASHES, block_size=BLOCK)


def ids(placement: object) -> tuple[str, str | None]:
    return (placement.decode, placement.prefill)  # type: ignore[attr-defined]


def view(workers: list[WorkerRecord], hits: dict[str, int] | None = None) -> StaticView:
    v = StaticView(workers)
    v.hits = {WorkerId(k): n for k, n in (hits or {}).items()}
    return v


def test_cache_aware_prefers_the_prefill_worker_holding_the_prefix() -> None:
    workers = [worker("p1", P), worker("p2", P, prefill_tokens=500), worker("d", D)]
    policy = build_policy(named_config("cache-aware"))
    assert ids(policy.place(LONG, view(workers, {"p2": 18}))) == ("d", "p2")
    placement = policy.place(LONG, view(workers, {"p2": 18}))
    assert placement.prefill_hit_blocks == 18 and placement.decode_hit_blocks == 0
    # without hits the less loaded one wins
    assert ids(policy.place(LONG, view(workers))) == ("d", "p1")
    # least-loaded ignores the cache
    assert ids(
        build_policy(named_config("least-loaded")).place(LONG, view(workers, {"p2": 18}))
    ) == (
        "d",
        "p1",
    )


def test_kvferry_pairs_within_the_nvlink_domain() -> None:
    workers = [
        worker("p-a", P, at="z1/r1/nvl-a/n1"),
        worker("p-b", P, at="z1/r2/nvl-b/n3", prefill_tokens=4000),
        worker("d-a", D, at="z1/r1/nvl-a/n2", running=1),
        worker("d-b", D, at="z1/r2/nvl-b/n4"),
    ]
    kvferry = build_policy(named_config("kvferry"))
    placement = kvferry.place(LONG, view(workers, {"p-a": 1}))
    assert ids(placement) == ("d-a", "p-a")
    assert placement.tier is Tier.SAME_NVLINK_DOMAIN
    nbytes = LONG.num_prompt_tokens * KV_BLOCK_BYTES // BLOCK
    assert placement.est_transfer_s == pytest.approx(nbytes / 200e9)
    # the same world without topology: the idle decode worker, across racks
    cache_aware = build_policy(named_config("cache-aware"))
    assert ids(cache_aware.place(LONG, view(workers, {"p-a": 1}))) == ("d-b", "p-a")
    assert cache_aware.place(LONG, view(workers, {"p-a": 1})).tier is Tier.SAME_ZONE


def test_measured_bandwidth_replaces_the_tier_default() -> None:
    workers = [
        worker("p", P, at="z1/r1/nvl-a/n1"),
        worker("d-near", D, at="z1/r1/nvl-a/n2"),
        worker("d-far", D, at="z1/r2/nvl-b/n3"),
    ]
    table = BandwidthTable()
    v = StaticView(workers, bandwidth=table)
    policy = build_policy(named_config("kvferry"))
    assert ids(policy.place(LONG, v)) == ("d-near", "p")
    # that NVLink pair turns out slow in practice (a bad link): 0.5 GB/s measured
    for _ in range(3):
        assert table.observe(WorkerId("p"), WorkerId("d-near"), 10**9, 2.0)
    placement = policy.place(LONG, v)
    assert ids(placement) == ("d-far", "p")
    nbytes = LONG.num_prompt_tokens * KV_BLOCK_BYTES // BLOCK
    assert placement.est_transfer_s == pytest.approx(nbytes / 25e9)  # same zone default


def test_bandwidth_table_average_and_limits() -> None:
    table = BandwidthTable()
    a, b = WorkerId("a"), WorkerId("b")
    assert table.measured(a, b) is None
    assert not table.observe(a, b, 100, 1.0)  # too small to measure
    assert not table.observe(a, b, 10**6, 0.0)  # no duration
    assert table.observe(a, b, 10**9, 1.0)
    assert table.measured(a, b) == pytest.approx(1e9)
    assert table.observe(a, b, 3 * 10**9, 1.0)
    assert table.measured(a, b) == pytest.approx(1e9 + 0.2 * 2e9)  # alpha 0.2
    assert table.forget([a]) == 1 and table.measured(a, b) is None
    recs = [worker("a", P, at="z1/r1"), worker("b", D, at="z1/r1")]
    assert table.transfer_s(recs[0], recs[1], 50 * 10**9) == pytest.approx(1.0)  # same rack


def test_the_tables_tier_is_tier_between() -> None:
    rng = random.Random(0)
    values = ["", "a", "b"]
    table = BandwidthTable()
    for i in range(300):
        at = "/".join(rng.choice(values) for _ in range(4))
        other = "/".join(rng.choice(values) for _ in range(4))
        a, b = worker(f"a{i}", P, at=at), worker(f"b{i}", D, at=other)
        assert table._tier(a, b) == tier_between(a.info.labels, b.info.labels)


def test_measurements_calibrate_the_tier_defaults() -> None:
    """Links that deliver a tenth of their tier's nominal bandwidth make the unmeasured
    pairs a tenth as fast too, so a measured near pair still beats an unmeasured far one."""
    table = BandwidthTable()
    p, near, far = (
        worker("p", P, at="z1/r1/nvl-a/n1"),
        worker("near", D, at="z1/r1/nvl-a/n2"),
        worker("far", D, at="z1/r2/nvl-b/n3"),
    )
    assert table.bytes_per_s(p, far) == pytest.approx(25e9)
    table.observe(WorkerId("p"), WorkerId("near"), 20 * 10**9, 1.0, Tier.SAME_NVLINK_DOMAIN)
    assert table.calibration == pytest.approx(0.1)
    assert table.bytes_per_s(p, near) == pytest.approx(20e9)  # measured
    assert table.bytes_per_s(p, far) == pytest.approx(2.5e9)  # 25 GB/s x 0.1
    assert table.bytes_per_s(p, near) > table.bytes_per_s(p, far)
    table.observe(WorkerId("p"), WorkerId("near"), 40 * 10**9, 1.0, Tier.SAME_NVLINK_DOMAIN)
    assert table.calibration == pytest.approx(0.1 + 0.2 * (0.2 - 0.1))
    assert table.bytes_per_s(p, near) == pytest.approx(20e9 + 0.2 * 20e9)


DISAGG = [
    # (name, prompt tokens, decode hits in blocks, expected prefill)
    ("long prompt, nothing cached: prefill hop", 320, 0, "p"),
    ("short prompt: whole on decode", 60, 0, None),
    ("long prompt mostly cached on decode: whole on decode", 320, 17, None),  # 48 uncached
    ("long prompt partly cached on decode: hop", 320, 10, "p"),  # 160 uncached
]


@pytest.mark.parametrize(
    ("tokens", "decode_hits", "prefill"), [c[1:] for c in DISAGG], ids=[c[0] for c in DISAGG]
)
def test_conditional_disaggregation_counts_the_uncached_part(
    tokens: int, decode_hits: int, prefill: str | None
) -> None:
    workers = [worker("p", P), worker("d", D)]
    request = PlacementRequest(tokens, HASHES[: tokens // BLOCK], block_size=BLOCK)
    placement = build_policy(named_config("kvferry")).place(
        request, view(workers, {"d": decode_hits})
    )
    assert ids(placement) == ("d", prefill)
    assert placement.decode_hit_blocks == decode_hits
    assert placement.tier is (None if prefill is None else Tier.ELSEWHERE)
    assert 0.0 <= placement.score <= 1.0


def test_a_whole_run_may_win_on_another_decode_worker() -> None:
    # d1 caches the prompt (runs it whole), d2 is a bit less loaded but would need a hop
    workers = [worker("p", P), worker("d1", D, running=1), worker("d2", D)]
    placement = build_policy(named_config("kvferry")).place(LONG, view(workers, {"d1": 20}))
    assert ids(placement) == ("d1", None)
    assert placement.prefill_hit_blocks == 20


def test_no_compatible_prefill_worker_means_the_decode_worker_computes() -> None:
    workers = [worker("p", P, block_size=32), worker("d", D)]
    for name in ("kvferry", "random", "round-robin", "least-loaded"):
        assert ids(build_policy(named_config(name)).place(LONG, view(workers))) == ("d", None), name


def test_no_eligible_decode_worker_is_a_typed_error() -> None:
    workers = [worker("p", P), worker("d", D, draining=True), worker("m", M)]
    request = replace(LONG, exclude=frozenset({WorkerId("m")}))
    for name in ("kvferry", "random", "round-robin", "least-loaded", "cache-aware"):
        with pytest.raises(NoEligibleWorkersError, match="no decode-capable worker"):
            build_policy(named_config(name)).place(request, view(workers))


def test_random_picker_is_seeded_uniform_and_eligible_only() -> None:
    workers = [worker(f"d{i}", D) for i in range(4)] + [worker("gone", D, draining=True)]
    workers += [worker("p0", P), worker("p1", P)]
    picks = [
        ids(build_policy(named_config("random", seed=1)).place(LONG, view(workers)))
        for _ in range(3)
    ]
    assert len(set(picks)) == 1  # the same seed, the same first pick
    policy = build_policy(named_config("random", seed=2))
    counts = Counter(ids(policy.place(LONG, view(workers))) for _ in range(800))
    assert {d for d, _ in counts} == {"d0", "d1", "d2", "d3"}
    assert {p for _, p in counts} == {"p0", "p1"}
    assert min(counts.values()) > 800 / 8 * 0.6  # 8 pairs, each near 100


def test_round_robin_cycles_in_id_order() -> None:
    workers = [worker(w, D) for w in ("d2", "d0", "d1")] + [worker("p1", P), worker("p0", P)]
    policy = build_policy(named_config("round-robin"))
    got = [ids(policy.place(LONG, view(workers))) for _ in range(4)]
    assert got == [("d0", "p0"), ("d1", "p1"), ("d2", "p0"), ("d0", "p1")]


def _brute_force(
    config: PlacementConfig,
    workers: list[WorkerRecord],
    hits: dict[str, int],
    request: PlacementRequest,
) -> float:
    """The best option score over EVERY (prefill, decode) pair and whole run."""
    policy = build_policy(config)
    facts = RequestFacts(request.num_prompt_tokens, len(request.block_hashes), request.block_size)
    v = view(workers, hits)
    scored = {
        side: {
            w.info.worker_id: sum(
                weight * s.score(w, hits.get(w.info.worker_id, 0), facts)
                for s, weight in policy._side_scorers[side]
            )
            for w in workers
        }
        for side in policy._side_scorers
    }
    weights = policy._weights
    total = sum(weights.values())
    prefill = [w for w in workers if w.info.role is P]
    best = -1.0
    for d in (w for w in workers if w.info.role.can_decode):
        dh = hits.get(d.info.worker_id, 0)
        dscore = scored[Side.DECODE][d.info.worker_id]
        uncached = request.num_prompt_tokens - dh * BLOCK
        if not prefill or uncached <= config.short_prompt_tokens:
            best = max(best, (dscore + weights["prefill"] + weights["pair"]) / total)
            continue
        for p in prefill:
            est = v.transfer_s(p, d, uncached * KV_BLOCK_BYTES // BLOCK)
            pair = sum(weight * s.score_pair(est) for s, weight in policy._pair_scorers)
            pscore = scored[Side.PREFILL][p.info.worker_id]
            best = max(best, (dscore + pscore + pair) / total)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_small_worlds_match_a_brute_force_search(seed: int) -> None:
    rng = random.Random(seed)
    places = ["z1/r1/nvl-a/n1", "z1/r1/nvl-a/n2", "z1/r2/nvl-b/n3", "z2/r3/nvl-c/n4", ""]
    workers = [
        worker(
            f"{role.value}{i}",
            role,
            running=rng.randrange(4),
            prefill_tokens=rng.randrange(5000),
            free=rng.randrange(101),
            in_flight=rng.randrange(3),
            at=rng.choice(places),
        )
        for role, n in ((P, rng.randrange(1, 5)), (D, rng.randrange(1, 5)))
        for i in range(n)
    ]
    hits = {w.info.worker_id: rng.randrange(21) for w in workers if rng.random() < 0.5}
    tokens = rng.choice([40, 200, 320])
    request = PlacementRequest(tokens, HASHES[: tokens // BLOCK], block_size=BLOCK)
    config = replace(named_config("kvferry"), shortlist=8)  # shortlist >= every side: exact
    placement = build_policy(config).place(request, view(workers, hits))
    assert placement.score == pytest.approx(_brute_force(config, workers, hits, request))


def test_a_large_cluster_scores_a_bounded_sample_and_still_finds_what_matters() -> None:
    prefill = [
        worker(f"p{i:03}", P, at=f"z1/r{i // 16}/nvl-{i // 8}/n{i // 4}") for i in range(200)
    ]
    decode = [
        worker(f"d{i:03}", D, running=3, at=f"z1/r{i // 16}/nvl-{i // 8}/n{1000 + i // 4}")
        for i in range(200)
    ]
    workers = prefill + decode
    policy = build_policy(named_config("kvferry"))
    # one prefill worker holds the whole prompt: it is found among 200
    v = view(workers, {"p123": 20})
    placement = policy.place(LONG, v)
    assert placement.prefill == "p123"
    assert placement.tier is Tier.SAME_NVLINK_DOMAIN  # a decode worker in nvl-15 was drawn
    # only one decode worker is eligible: found even if no random draw hits it
    lonely = [replace(w, state=w.state.__class__.DRAINING) for w in decode[1:]] + [decode[0]]
    assert (
        build_policy(named_config("kvferry", seed=5)).place(LONG, view(prefill + lonely)).decode
        == "d000"
    )


def test_scores_stay_in_range_over_many_random_worlds() -> None:
    rng = random.Random(0)
    for name in ("kvferry", "cache-aware", "least-loaded"):
        policy = build_policy(named_config(name))
        for _ in range(50):
            workers = [
                worker(
                    f"{r.value}{i}",
                    r,
                    running=rng.randrange(50),
                    prefill_tokens=rng.randrange(10**6),
                )
                for r, i in itertools.product((P, D), range(3))
            ]
            placement = policy.place(LONG, view(workers, {"d1": rng.randrange(21)}))
            assert 0.0 <= placement.score <= 1.0


def test_custom_pipeline_with_a_filter_from_config() -> None:
    config = PlacementConfig(
        filters=(
            PluginSpec("healthy"),
            PluginSpec("not_excluded"),
            PluginSpec("max_in_flight", 1.0, (("limit", 2.0),)),
        ),
        scorers=(PluginSpec("running_load"),),
    )
    workers = [worker("d-busy", D, in_flight=2), worker("d-loaded", D, running=30), worker("p", P)]
    assert ids(build_policy(config).place(LONG, view(workers))) == ("d-loaded", "p")


@pytest.mark.parametrize("seed", range(10))
def test_transfer_time_is_bytes_over_the_measured_or_the_tier_bandwidth(seed: int) -> None:
    """The table's inlined fast path against the plain formula: measured pairs use their
    average, others the tier default (from tier_between) x the calibration; a worker that
    registers again with new labels is seen at its new place."""
    rng = random.Random(seed)
    values = ["", "a", "b"]
    table = BandwidthTable()
    records = [
        worker(f"w{i}", rng.choice([P, D]), at="/".join(rng.choice(values) for _ in range(4)))
        for i in range(8)
    ]
    measured_pairs = [tuple(rng.sample(records, 2)) for _ in range(rng.randrange(6))]
    for a, b in measured_pairs:
        tier = rng.choice([None, tier_between(a.info.labels, b.info.labels)])
        table.observe(a.info.worker_id, b.info.worker_id, 10**9, rng.uniform(0.01, 1.0), tier)
    for _ in range(60):
        if measured_pairs and rng.random() < 0.4:
            a, b = rng.choice(measured_pairs)
        else:
            a, b = rng.choice(records), rng.choice(records)
        if rng.random() < 0.1:  # re-registered elsewhere: a new WorkerInfo, same id
            at = "/".join(rng.choice(values) for _ in range(4))
            fresh = worker(a.info.worker_id, a.info.role, at=at)
            a.info = fresh.info
        nbytes = rng.choice([0, -1, 1, 10**6, 3 * 10**9])
        measured = table.measured(a.info.worker_id, b.info.worker_id)
        if nbytes <= 0:
            expected = 0.0
        elif measured is not None:
            expected = nbytes / measured
        else:
            tier = tier_between(a.info.labels, b.info.labels)
            expected = nbytes / table.tier_bytes_per_s(tier)
        assert table.transfer_s(a, b, nbytes) == pytest.approx(expected, rel=1e-12)
        if nbytes > 0:
            assert table.bytes_per_s(a, b) == pytest.approx(nbytes / expected, rel=1e-12)


@pytest.mark.parametrize("has_prefill", [True, False])
def test_marking_decode_candidates_follows_the_disaggregation_rule(has_prefill: bool) -> None:
    """`Joint.mark` (whole run or hop, KV bytes to send) against the rule written plainly."""
    rng = random.Random(int(has_prefill))
    for _ in range(200):
        block = rng.choice([0, 16])  # 0: each worker's own block size
        tokens = rng.randrange(0, 400)
        facts = RequestFacts(tokens, tokens // 16, block)
        short = rng.choice([0, 16, 64])
        decode = [
            Scored(
                worker(
                    f"d{i}",
                    D,
                    block_size=rng.choice([0, 8, 16]),
                    kv_bytes_per_block=rng.choice([0, KV_BLOCK_BYTES]),
                ),
                rng.random(),
                rng.randrange(0, 30),
            )
            for i in range(rng.randrange(1, 6))
        ]
        joint = Joint(StaticView([]), facts, short, [], [], _WEIGHTS, has_prefill=has_prefill)
        split = joint.mark(decode)
        for d in decode:
            info = d.worker.info
            uncached = max(0, tokens - d.hits * (block or info.block_size))
            whole = not has_prefill or uncached <= short
            assert d.whole is whole
            if whole or not info.block_size:
                assert d.kv_bytes == 0
            else:
                assert d.kv_bytes == uncached * info.kv_bytes_per_block // info.block_size
        assert split == [d for d in decode if not d.whole]
