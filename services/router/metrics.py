"""The router's figures: a recent-latency window (`GetClusterStatus`, the operator's
planner) and Prometheus metrics on `--metrics-port` (dashboards, HPA/KEDA through a
Prometheus adapter).

Each router owns its own `CollectorRegistry` (never the process-global default), so two
routers in one process (tests) never share counters. Pool gauges are computed at scrape
time from the registry of workers, so they can never go stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .latency import LatencySummary, LatencyWindow
from .registry import Registry
from .workers import WorkerState

log = logging.getLogger(__name__)

# Seconds; TTFT spans queueing + a long prompt, TPOT a decode step.
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class _PoolCollector(Collector):
    def __init__(
        self,
        registry: Registry,
        in_flight: Callable[[], int],
        summary: Callable[[], LatencySummary],
    ) -> None:
        self.registry = registry
        self.in_flight = in_flight
        self.summary = summary

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "kvferry_router_requests_in_flight", "Requests the router holds now."
        )
        running.add_metric([], self.in_flight())
        yield running
        yield from _window_families(self.summary())
        placed = GaugeMetricFamily(
            "kvferry_pool_requests_in_flight",
            "Requests the router placed on the pool's workers that have not finished.",
            labels=["role"],
        )
        workers = GaugeMetricFamily(
            "kvferry_workers", "Registered workers.", labels=["role", "state"]
        )
        waiting = GaugeMetricFamily(
            "kvferry_pool_requests_waiting",
            "Requests queued on the pool's workers.",
            labels=["role"],
        )
        prefill_tokens = GaugeMetricFamily(
            "kvferry_pool_prefill_tokens_waiting",
            "Prompt tokens not yet computed on the pool's workers.",
            labels=["role"],
        )
        kv_used = GaugeMetricFamily(
            "kvferry_pool_kv_blocks_used_ratio",
            "Share of the pool's KV blocks in use (0..1).",
            labels=["role"],
        )
        counts: dict[tuple[str, str], int] = {}
        queued: dict[str, int] = {}
        tokens: dict[str, int] = {}
        blocks: dict[str, tuple[int, int]] = {}
        placed_by: dict[str, int] = {}
        for r in self.registry.records():
            role = r.info.role.value
            counts[(role, r.state.value)] = counts.get((role, r.state.value), 0) + 1
            placed_by[role] = placed_by.get(role, 0) + r.in_flight
            if r.state is not WorkerState.HEALTHY:
                continue
            queued[role] = queued.get(role, 0) + r.load.num_waiting
            tokens[role] = tokens.get(role, 0) + r.load.prefill_tokens_waiting
            free, total = blocks.get(role, (0, 0))
            blocks[role] = (free + r.load.free_kv_blocks, total + r.load.total_kv_blocks)
        for (role, state), n in sorted(counts.items()):
            workers.add_metric([role, state], n)
        for role in sorted(placed_by):
            placed.add_metric([role], placed_by[role])
        for role in sorted(queued):
            waiting.add_metric([role], queued[role])
            prefill_tokens.add_metric([role], tokens[role])
            free, total = blocks[role]
            kv_used.add_metric([role], (total - free) / total if total else 0.0)
        yield from (workers, placed, waiting, prefill_tokens, kv_used)


WINDOW_LATENCY = "kvferry_router_window_latency_seconds"
WINDOW_REQUESTS = "kvferry_router_window_requests"


def _window_families(summary: LatencySummary) -> Iterator[GaugeMetricFamily]:
    """The latency window as gauges (what the operator's planner reads: exact nearest-rank
    percentiles, which histogram buckets cannot give)."""
    count = GaugeMetricFamily(
        WINDOW_REQUESTS,
        f"Requests that ended in the last {summary.window_s:.0f} s, by outcome.",
        labels=["outcome"],
    )
    count.add_metric(["finished"], summary.num_requests)
    count.add_metric(["failed"], summary.num_errors)
    yield count
    latency = GaugeMetricFamily(
        WINDOW_LATENCY,
        f"TTFT and TPOT percentiles over the requests finished in the last"
        f" {summary.window_s:.0f} s (absent while none finished).",
        labels=["metric", "quantile"],
    )
    for metric, p in (("ttft", summary.ttft_s), ("tpot", summary.tpot_s)):
        if p is not None:
            for q, value in (("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)):
                latency.add_metric([metric, q], value)
    yield latency


class RouterMetrics:
    def __init__(
        self,
        registry: Registry,
        in_flight: Callable[[], int],
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = LatencyWindow(window_s)
        self._lock = threading.Lock()
        """The window is read from the scrape thread too."""
        self.prometheus = CollectorRegistry(auto_describe=True)
        self._ttft = Histogram(
            "kvferry_router_ttft_seconds",
            "Time to first token: arrival at the router to the first token sent.",
            buckets=_TTFT_BUCKETS,
            registry=self.prometheus,
        )
        self._tpot = Histogram(
            "kvferry_router_tpot_seconds",
            "Mean time per output token after the first, per request.",
            buckets=_TPOT_BUCKETS,
            registry=self.prometheus,
        )
        self._requests = Counter(
            "kvferry_router_requests",
            "Requests by how they ended (finished, aborted, cancelled, or a gRPC status).",
            ["outcome"],
            registry=self.prometheus,
        )
        self._tokens = Counter(
            "kvferry_router_output_tokens",
            "Output tokens sent to clients.",
            registry=self.prometheus,
        )
        self.prometheus.register(_PoolCollector(registry, in_flight, lambda: self.summary(clock())))
        self._http: Any = None

    def finished(
        self, now: float, ttft_s: float | None, tpot_s: float | None, num_tokens: int
    ) -> None:
        """A request that ended normally (stop, length); ttft None: no token was sent."""
        self._requests.labels("finished").inc()
        self._tokens.inc(num_tokens)
        if ttft_s is None:
            return
        self._ttft.observe(ttft_s)
        if tpot_s is not None:
            self._tpot.observe(tpot_s)
        with self._lock:
            self.window.finished(now, ttft_s, tpot_s)

    def ended(self, now: float, outcome: str, *, error: bool, num_tokens: int = 0) -> None:
        """A request that did not finish normally (aborted, cancelled, or failed)."""
        self._requests.labels(outcome).inc()
        self._tokens.inc(num_tokens)
        if error:
            with self._lock:
                self.window.failed(now)

    def summary(self, now: float) -> LatencySummary:
        with self._lock:
            return self.window.summary(now)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.prometheus)
        self._http = server
        bound: int = server.server_address[1]
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
