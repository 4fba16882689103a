"""The simulation end to end on tiny clusters: exact timings, the real placement code
deciding, the real KV index feeding it, bytes by tier, the backlog, determinism."""

from __future__ import annotations

import dataclasses
from itertools import islice
from pathlib import Path

import pytest

from kvferry.services.router.placement import Placement, PlacementRequest
from kvferry.services.router.placement.pipeline import Pipeline
from kvferry.sim.config import SimConfig, lay_out
from kvferry.sim.hardware import Calibration, GpuModel
from kvferry.sim.runner import simulate
from kvferry.sim.trace import SimRequest, parse_mooncake, to_requests
from kvferry.topology import Tier

MOONCAKE = (
    Path(__file__).resolve().parents[3]
    / "shared/data/traces/mooncake_fast25/conversation_trace.jsonl"
)
GPU = GpuModel()
CAL = Calibration()


def _req(i: int, t: float, n_in: int, n_out: int, hashes: tuple[int, ...] = ()) -> SimRequest:
    return SimRequest(i, t, n_in, n_out, hashes)


def _real(n: int) -> list[SimRequest]:
    with MOONCAKE.open() as f:
        rows = parse_mooncake(list(islice(f, n)), n)
    return to_requests(rows, time_scale=20.0, spread_s=3.0)


def test_one_request_through_a_pair_on_one_node_has_exact_times() -> None:
    run = simulate([_req(0, 0.0, 1024, 3)], SimConfig(prefill=1, decode=1), CAL, "kvferry")
    (r,) = run.records
    compute = GPU.prefill_s([(0, 1024)])
    wire = 1024 * 131_072 / 400e9
    first = max(wire, compute + wire / 32) + 10e-6
    assert r.prefill_worker == "prefill-000" and r.decode_worker == "decode-000"
    assert r.tier is Tier.SAME_NODE and r.kv_bytes == 1024 * 131_072
    assert r.first_token_s == pytest.approx(first, rel=1e-12)
    steps = GPU.decode_step_s(1, 1024) + GPU.decode_step_s(1, 1025)
    assert r.finished_s == pytest.approx(first + steps, rel=1e-12)


def test_a_short_prompt_runs_whole_on_its_decode_worker() -> None:
    run = simulate([_req(0, 1.0, 40, 2)], SimConfig(prefill=1, decode=1), CAL, "least-loaded")
    (r,) = run.records
    assert r.prefill_worker is None and r.tier is None and r.kv_bytes == 0
    first = 1.0 + GPU.decode_step_s(0, 0, (0, 40))
    assert r.first_token_s == pytest.approx(first, rel=1e-12)
    assert r.finished_s == pytest.approx(first + GPU.decode_step_s(1, 40), rel=1e-12)


@pytest.mark.parametrize(
    ("shape", "tier"),
    [
        ({}, Tier.SAME_NODE),
        ({"gpus_per_node": 1, "nodes_per_nvlink_domain": 2}, Tier.SAME_NVLINK_DOMAIN),
        ({"gpus_per_node": 1, "nodes_per_rack": 2}, Tier.SAME_RACK),
        ({"gpus_per_node": 1, "nodes_per_rack": 1, "racks_per_zone": 2}, Tier.SAME_ZONE),
        ({"gpus_per_node": 1, "nodes_per_rack": 1, "racks_per_zone": 1}, Tier.ELSEWHERE),
    ],
)
def test_kv_bytes_are_counted_by_the_pairs_tier(shape: dict[str, int], tier: Tier) -> None:
    config = SimConfig(prefill=1, decode=1, **shape)
    requests = [_req(i, 0.5 * i, 600 + 100 * i, 4) for i in range(4)]
    run = simulate(requests, config, CAL, "round-robin")
    expected = sum(r.input_tokens for r in requests) * 131_072
    assert all(r.tier is tier for r in run.records)
    assert run.summary.kv_bytes_by_tier[tier.label] == expected
    assert sum(run.summary.kv_bytes_by_tier.values()) == expected
    cross = expected if tier > Tier.SAME_NVLINK_DOMAIN else 0
    assert run.summary.kv_bytes_cross_nvlink == cross
    # A slower link only delays the first token (the push overlaps the prompt's pass).
    link = CAL.links.bandwidth(tier)
    r0 = run.records[0]
    compute = GPU.prefill_s([(0, 600)])
    wire = 600 * 131_072 / link
    assert r0.first_token_s == pytest.approx(
        max(wire, compute + wire / 32) + CAL.links.latency_s[tier], rel=1e-12
    )


def test_the_index_learns_the_prefill_cache_and_cache_aware_placement_uses_it() -> None:
    hashes = tuple(range(100, 110))
    config = SimConfig(prefill=4, decode=2, index_poll_s=0.5)
    requests = [_req(0, 0.0, 5200, 2, hashes), _req(1, 5.0, 5200, 2, hashes)]
    run = simulate(requests, config, CAL, "cache-aware")
    a, b = run.records
    assert a.hit_blocks == 0
    assert b.prefill_worker == a.prefill_worker  # the worker holding the prefix
    assert b.predicted_hit_blocks == b.hit_blocks == 10
    assert b.hit_tokens == 5120 and b.first_token_s - b.arrival_s < a.first_token_s
    # Before the index has polled the event, placement cannot know about it.
    late = simulate(
        [_req(0, 0.0, 5200, 2, hashes), _req(1, 1.0, 5200, 2, hashes)],
        dataclasses.replace(config, index_poll_s=100.0),
        CAL,
        "cache-aware",
    )
    assert late.records[1].predicted_hit_blocks == 0


def test_every_decision_comes_from_the_real_placement_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[PlacementRequest, Placement]] = []
    real = Pipeline.place

    def spy(self: Pipeline, request: PlacementRequest, view: object) -> Placement:
        placement = real(self, request, view)  # type: ignore[arg-type]
        calls.append((request, placement))
        return placement

    monkeypatch.setattr(Pipeline, "place", spy)
    requests = _real(60)
    run = simulate(requests, SimConfig(prefill=4, decode=4), CAL, "kvferry")
    assert run.summary.admission_rejections == 0
    assert len(calls) == len(requests)
    for (request, placement), record, req in zip(calls, run.records, requests, strict=True):
        assert request.num_prompt_tokens == req.input_tokens
        assert request.block_hashes == req.block_hashes and request.block_size == 512
        assert record.decode_worker == placement.decode
        assert record.prefill_worker == placement.prefill


def test_a_full_decode_worker_refuses_and_the_request_waits_for_room() -> None:
    small = Calibration(gpu=dataclasses.replace(GPU, kv_cache_gib=0.25))  # 2,048 tokens
    requests = [_req(0, 0.0, 1024, 200), _req(1, 0.0, 1024, 200)]
    run = simulate(requests, SimConfig(prefill=1, decode=1), small, "least-loaded")
    a, b = run.records
    assert a.rejections == 0 and b.rejections >= 1
    assert b.backlog_s == pytest.approx(a.finished_s)  # placed when `a` freed its KV
    assert b.first_token_s > a.finished_s
    with pytest.raises(ValueError, match="needs 2548 tokens"):
        simulate([_req(0, 0.0, 2500, 48)], SimConfig(prefill=1, decode=1), small, "random")


def test_same_seed_same_run_and_the_seed_matters() -> None:
    requests = _real(150)
    config = SimConfig(prefill=4, decode=4, seed=1)
    first = simulate(requests, config, CAL, "random")
    again = simulate(requests, config, CAL, "random")
    assert first.records == again.records and first.summary == again.summary
    other = simulate(requests, dataclasses.replace(config, seed=2), CAL, "random")
    assert [r.decode_worker for r in other.records] != [r.decode_worker for r in first.records]


def test_layouts() -> None:
    interleaved = lay_out(SimConfig(prefill=6, decode=2))
    assert [s.worker_id for s in interleaved] == [
        "prefill-000",
        "prefill-001",
        "prefill-002",
        "decode-000",
        "prefill-003",
        "prefill-004",
        "prefill-005",
        "decode-001",
    ]
    split = lay_out(SimConfig(prefill=9, decode=7, layout="split"))
    assert {s.labels["node"] for s in split if s.role.value == "decode"} == {"node-1"}
    nvl = lay_out(SimConfig(prefill=30, decode=2, nodes_per_nvlink_domain=2, nodes_per_rack=2))
    assert nvl[-1].labels == {
        "node": "node-3",
        "nvlink_domain": "nvl-1",
        "rack": "rack-1",
        "zone": "zone-0",
    }
    with pytest.raises(ValueError, match="--decode must be at least 1"):
        SimConfig(decode=0)
    with pytest.raises(ValueError, match="--layout"):
        SimConfig(layout="spiral")


@pytest.mark.parametrize("feed", ["push", "wire", "none"])
def test_the_bandwidth_table_learns_what_the_feed_says(feed: str) -> None:
    from kvferry.services.router.placement import BandwidthTable, build_policy, named_config
    from kvferry.sim.simulation import Simulation

    config = SimConfig(prefill=1, decode=1, gpus_per_node=1, bandwidth_feed=feed)
    placement = named_config("kvferry")
    sim = Simulation(config, CAL, build_policy(placement), BandwidthTable(placement.transfer))
    (r,) = sim.run([_req(0, 0.0, 4096, 3)])
    pairs = sim.bandwidth.pairs()
    if feed == "none":
        assert pairs == {}
        return
    (measured,) = pairs.values()
    nbytes = 4096 * 131_072
    link = CAL.links.bandwidth(Tier.SAME_RACK)
    if feed == "push":  # from the Prefill call's start: the prefill's pace, not the link's
        assert measured.bytes_per_s == pytest.approx(nbytes / r.first_token_s)
        assert measured.bytes_per_s < link / 4
    else:
        assert measured.bytes_per_s == pytest.approx(nbytes / (nbytes / link + 20e-6))
