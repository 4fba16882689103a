"""Recent end-to-end latency: what the router reports to `kvferry status`, Prometheus and
the operator's planner. Pure: the caller passes the clock.

A finished request contributes its TTFT (arrival at the router -> first token sent, so
queueing counts) and its TPOT (the mean gap between later tokens; only with 2+ tokens).
Percentiles are over the requests that finished in the last `window_s` seconds, by the
nearest-rank method (no interpolation: every reported value is one a request saw).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class LatencySummary:
    window_s: float
    num_requests: int
    num_errors: int
    ttft_s: Percentiles | None
    """None when no request finished in the window."""
    tpot_s: Percentiles | None
    """None when no request with 2+ tokens finished in the window."""


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) of a non-empty ascending list, nearest-rank method."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    rank = math.ceil(q * len(sorted_values))
    return sorted_values[rank - 1]


def _percentiles(values: list[float]) -> Percentiles | None:
    if not values:
        return None
    values.sort()
    return Percentiles(
        nearest_rank(values, 0.50), nearest_rank(values, 0.90), nearest_rank(values, 0.99)
    )


class LatencyWindow:
    """Finished requests of the last `window_s` seconds (at most `capacity` kept: under a
    flood the oldest go first, so the figures stay recent and memory stays bounded)."""

    def __init__(self, window_s: float = 60.0, capacity: int = 20_000) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.window_s = window_s
        self._done: deque[tuple[float, float, float | None]] = deque(maxlen=capacity)
        self._errors: deque[float] = deque(maxlen=capacity)

    def finished(self, now: float, ttft_s: float, tpot_s: float | None) -> None:
        if ttft_s < 0 or (tpot_s is not None and tpot_s < 0):
            raise ValueError(f"negative latency: ttft={ttft_s} tpot={tpot_s}")
        self._done.append((now, ttft_s, tpot_s))

    def failed(self, now: float) -> None:
        self._errors.append(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._done and self._done[0][0] < horizon:
            self._done.popleft()
        while self._errors and self._errors[0] < horizon:
            self._errors.popleft()

    def summary(self, now: float) -> LatencySummary:
        self._expire(now)
        ttfts = [t for _, t, _ in self._done]
        tpots = [t for _, _, t in self._done if t is not None]
        return LatencySummary(
            self.window_s,
            len(self._done),
            len(self._errors),
            _percentiles(ttfts),
            _percentiles(tpots),
        )
