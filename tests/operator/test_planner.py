"""The planner: raw recommendations (table), stabilization and rate limits on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from kvferry.operator.crd.spec import Objectives, Role
from kvferry.operator.planner import (
    Decision,
    PlannerConfig,
    PoolBounds,
    PoolHistory,
    PoolObservation,
    plan,
    raw_recommendation,
)

CFG = PlannerConfig(scale_up_window_s=30, scale_down_window_s=300, scale_down_period_s=60)
OBJ = Objectives(ttft_ms=500, tpot_ms=50)  # targets at 80%: 400 ms, 40 ms
B4 = PoolBounds(current=4, min_replicas=1, max_replicas=10)


@pytest.mark.parametrize(
    ("role", "obs", "bounds", "want"),
    [
        (Role.PREFILL, PoolObservation(requests=5, ttft_ms=400), B4, 4),  # on target
        (Role.PREFILL, PoolObservation(requests=5, ttft_ms=430), B4, 4),  # within 10%
        (Role.PREFILL, PoolObservation(requests=5, ttft_ms=800), B4, 8),  # 2x -> 8
        (Role.PREFILL, PoolObservation(requests=5, ttft_ms=100), B4, 1),  # 0.25x -> 1
        (Role.DECODE, PoolObservation(requests=5, tpot_ms=60), B4, 6),  # 1.5x
        (Role.DECODE, PoolObservation(requests=5, tpot_ms=40, kv_utilization=1.0), B4, 5),
        (Role.PREFILL, PoolObservation(requests=5, prefill_tokens_waiting=4 * 32768), B4, 8),
        (Role.PREFILL, PoolObservation(requests=0, ttft_ms=900), B4, 1),  # idle -> min
        (Role.PREFILL, PoolObservation(), B4, 4),  # no signal: hold
        (Role.DECODE, PoolObservation(requests=3, tpot_ms=80), PoolBounds(0, 0, 4), 1),
    ],
)
def test_raw_recommendation(
    role: Role, obs: PoolObservation, bounds: PoolBounds, want: int
) -> None:
    assert raw_recommendation(role, obs, OBJ, bounds, CFG)[0] == want


def run(samples: list[tuple[float, float]], current: int = 4) -> list[int]:
    """Feed (time, tpot_ms) samples to a decode pool; return replicas after each."""
    history, out = PoolHistory(), []
    for now, tpot in samples:
        d: Decision = plan(
            Role.DECODE,
            PoolObservation(requests=10, tpot_ms=tpot),
            OBJ,
            PoolBounds(current, 1, 10),
            history,
            now,
            CFG,
        )
        history, current = d.history, d.replicas
        out.append(current)
    return out


def test_scale_up_waits_for_the_window_then_at_most_doubles() -> None:
    # 4x overload from t=0: nothing until the 30 s window is covered, then 4 -> 8 -> 10 (max).
    assert run([(t, 160.0) for t in (0, 15, 30, 45, 60)]) == [4, 4, 8, 10, 10]


def test_a_single_spike_adds_nothing() -> None:
    assert run([(0, 40), (15, 40), (30, 40), (45, 160), (60, 40), (75, 40)]) == [4] * 6


def test_scale_down_needs_a_full_quiet_window_and_steps_one_pod_per_period() -> None:
    quiet = [(float(t), 10.0) for t in range(0, 601, 15)]
    replicas = run(quiet)
    assert replicas[: 300 // 15] == [4] * (300 // 15)  # nothing before 300 s of low load
    assert replicas[300 // 15] == 3  # then one pod
    assert replicas[300 // 15 + 1 : 300 // 15 + 4] == [3, 3, 3]  # held for the drain period
    assert replicas[-1] == 1 and min(replicas) == 1  # reaches min, never below


def test_alternating_load_does_not_flap() -> None:
    samples = [(float(t), 160.0 if (t // 15) % 2 else 10.0) for t in range(0, 900, 15)]
    replicas = run(samples)
    changes = sum(1 for a, b in itertools.pairwise(replicas) if a != b)
    assert changes == 0, replicas


def test_bounds_clamp_a_pool_outside_them() -> None:
    d = plan(Role.DECODE, PoolObservation(), OBJ, PoolBounds(12, 1, 10), PoolHistory(), 0.0, CFG)
    assert d.replicas == 10


@pytest.mark.parametrize(
    "kwargs", [{"headroom": 0}, {"tolerance": -1}, {"scale_up_factor": 1}, {"scale_down_step": 0}]
)
def test_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PlannerConfig(**kwargs)  # type: ignore[arg-type]
