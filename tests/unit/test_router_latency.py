"""The router's latency window: percentiles against a brute-force reference, expiry, bounds."""

from __future__ import annotations

import math
import random

import pytest

from kvferry.services.router.latency import LatencyWindow, nearest_rank


def brute_quantile(values: list[float], q: float) -> float:
    """The smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    for v in ordered:
        if sum(x <= v for x in ordered) >= q * len(ordered) - 1e-9:
            return v
    raise AssertionError("unreachable")


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 11, 99, 100, 101])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_nearest_rank_matches_brute_force(n: int, q: float) -> None:
    rng = random.Random(n * 1000 + int(q * 100))
    values = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]
    assert nearest_rank(sorted(values), q) == brute_quantile(values, q)


def test_nearest_rank_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 0.5)
    with pytest.raises(ValueError, match="q must be"):
        nearest_rank([1.0], 0.0)


def test_summary_is_over_the_window_only() -> None:
    w = LatencyWindow(window_s=10.0)
    w.finished(0.0, ttft_s=5.0, tpot_s=0.5)  # expires at t > 10
    for i in range(10):
        w.finished(5.0 + i, ttft_s=0.1 * (i + 1), tpot_s=None if i == 0 else 0.01 * i)
    w.failed(0.5)  # expired
    w.failed(8.0)
    s = w.summary(now=11.0)
    assert (s.num_requests, s.num_errors) == (10, 1)
    assert s.ttft_s is not None and s.tpot_s is not None
    assert math.isclose(s.ttft_s.p50, 0.5) and math.isclose(s.ttft_s.p99, 1.0)
    assert math.isclose(s.tpot_s.p50, 0.05) and math.isclose(s.tpot_s.p90, 0.09)
    empty = w.summary(now=100.0)
    assert (empty.num_requests, empty.num_errors, empty.ttft_s, empty.tpot_s) == (0, 0, None, None)


def test_one_token_requests_have_ttft_but_no_tpot() -> None:
    w = LatencyWindow()
    w.finished(1.0, ttft_s=0.2, tpot_s=None)
    s = w.summary(1.0)
    assert s.ttft_s is not None and s.ttft_s.p50 == 0.2
    assert s.tpot_s is None


def test_memory_is_bounded_and_keeps_the_newest() -> None:
    w = LatencyWindow(window_s=1e9, capacity=5)
    for i in range(100):
        w.finished(float(i), ttft_s=float(i), tpot_s=None)
    s = w.summary(100.0)
    assert s.num_requests == 5
    assert s.ttft_s is not None and s.ttft_s.p50 == 97.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"window_s": 0}, "window_s"), ({"capacity": 0}, "capacity")],
)
def test_bad_configuration_is_rejected(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        LatencyWindow(**kwargs)  # type: ignore[arg-type]


def test_negative_latency_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        LatencyWindow().finished(0.0, ttft_s=-1.0, tpot_s=None)
