"""The simulator's summary: percentiles, SLO attainment, goodput, hit rate, bytes by tier."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kvferry.sim.metrics import RequestRecord, percentile, summarize
from kvferry.topology import Tier


def _record(
    i: int, arrival: float, ttft: float, tpot: float, out: int, **kw: object
) -> RequestRecord:
    first = arrival + ttft
    fields: dict[str, object] = dict(
        index=i,
        arrival_s=arrival,
        first_token_s=first,
        finished_s=first + tpot * (out - 1),
        input_tokens=1000,
        output_tokens=out,
        hit_tokens=0,
        hit_blocks=0,
        predicted_hit_blocks=0,
        decode_worker="decode-000",
        prefill_worker="prefill-000",
        tier=Tier.SAME_NODE,
        kv_bytes=0,
        rejections=0,
        backlog_s=0.0,
    )
    fields.update(kw)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def test_percentile_matches_numpy() -> None:
    rng = random.Random(3)
    for n in (1, 2, 5, 100):
        values = [rng.uniform(0, 10) for _ in range(n)]
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_attainment_goodput_and_percentiles_against_brute_force() -> None:
    rng = random.Random(11)
    records = []
    for i in range(200):
        out = rng.choice([1, 2, 50])
        records.append(
            _record(i, arrival=i * 0.1, ttft=rng.uniform(0, 4), tpot=rng.uniform(0, 0.1), out=out)
        )
    s = summarize(records, ttft_slo_ms=2000, tpot_slo_ms=50)
    met = 0
    for r in records:
        ttft = r.first_token_s - r.arrival_s
        ok = ttft <= 2.0
        if r.output_tokens >= 2:
            ok = ok and (r.finished_s - r.first_token_s) / (r.output_tokens - 1) <= 0.05
        met += ok
    duration = max(r.finished_s for r in records) - min(r.arrival_s for r in records)
    assert s.requests == 200
    assert s.slo_attainment == met / 200
    assert s.goodput_rps == pytest.approx(met / duration)
    assert s.offered_rps == pytest.approx(199 / 19.9)
    assert s.ttft_ms["p90"] == pytest.approx(
        float(np.percentile([(r.first_token_s - r.arrival_s) * 1000 for r in records], 90))
    )
    tpots = [
        (r.finished_s - r.first_token_s) / (r.output_tokens - 1) * 1000
        for r in records
        if r.output_tokens >= 2
    ]
    assert s.tpot_ms["p99"] == pytest.approx(float(np.percentile(tpots, 99)))


def test_one_token_requests_have_no_tpot_and_are_judged_on_ttft() -> None:
    r = _record(0, 0.0, ttft=1.0, tpot=0.0, out=1)
    assert r.tpot_s is None
    assert r.meets(1.0, 0.0) and not r.meets(0.5, 1.0)
    s = summarize([r], 1000, 1)
    assert math.isnan(s.tpot_ms["p50"]) and s.slo_attainment == 1.0


def test_hit_rate_bytes_by_tier_and_stale_index_count() -> None:
    records = [
        _record(0, 0, 0.1, 0.01, 5, hit_tokens=500, kv_bytes=10, tier=Tier.SAME_NODE),
        _record(1, 1, 0.1, 0.01, 5, hit_tokens=0, kv_bytes=20, tier=Tier.SAME_RACK),
        _record(
            2,
            2,
            0.1,
            0.01,
            5,
            kv_bytes=40,
            tier=Tier.ELSEWHERE,
            predicted_hit_blocks=3,
            hit_blocks=1,
        ),
        _record(
            3,
            3,
            0.1,
            0.01,
            5,
            kv_bytes=0,
            tier=None,
            prefill_worker=None,
            hit_tokens=1000,
            predicted_hit_blocks=1,
            hit_blocks=2,
        ),
    ]
    s = summarize(records, 1000, 100)
    assert s.prefix_hit_rate == 1500 / 4000
    assert dict(s.kv_bytes_by_tier) == {
        "same_node": 10,
        "same_nvlink_domain": 0,
        "same_rack": 20,
        "same_zone": 0,
        "elsewhere": 40,
    }
    assert s.kv_bytes_cross_nvlink == 60
    assert s.prefill_hops == 3
    assert s.index_overestimated_blocks == 2
    with pytest.raises(ValueError):
        summarize([], 1, 1)
