"""The operator's view of the router: a real router's `RouterMetrics` rendered as Prometheus
text (and served over HTTP) parses into the planner's observations."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from kvferry.operator.crd.spec import Role
from kvferry.operator.metrics import RouterMetricsSource, metrics_url, parse_router_metrics
from kvferry.services.router.metrics import RouterMetrics
from kvferry.services.router.registry import Registry, RegistryConfig
from kvferry.services.router.workers import Role as WorkerRole
from kvferry.services.router.workers import WorkerId, WorkerInfo, WorkerLoad

from .factories import ref, spec

NOW = 100.0


def router_metrics() -> RouterMetrics:
    registry = Registry(RegistryConfig(ttl_s=30.0))
    workers = [
        ("p0", WorkerRole.PREFILL, WorkerLoad(2, 1, 3000, 10, 10)),
        ("p1", WorkerRole.PREFILL, WorkerLoad(1, 1, 1000, 10, 10)),
        ("d0", WorkerRole.DECODE, WorkerLoad(0, 5, 0, 25, 100)),
        ("d1", WorkerRole.DECODE, WorkerLoad(1, 7, 0, 35, 100)),
    ]
    for wid, role, load in workers:
        info = WorkerInfo(WorkerId(wid), role, f"{wid}:1", f"{wid}:2", "tiny")
        registry.register(info, load, NOW)
    metrics = RouterMetrics(registry, lambda: 3, window_s=60.0, clock=lambda: NOW)
    for i in range(10):  # TTFT 0.1..1.0 s, TPOT 10..100 ms
        metrics.finished(NOW - 1, 0.1 * (i + 1), 0.01 * (i + 1), 8)
    metrics.ended(NOW - 1, "unavailable", error=True)
    return metrics


def test_a_real_scrape_becomes_the_planners_observations() -> None:
    text = generate_latest(router_metrics().prometheus).decode()
    sample = parse_router_metrics(text)
    assert sample.ttft_ms == pytest.approx(900.0)  # nearest-rank p90 of 10 values
    assert sample.tpot_ms == pytest.approx(90.0)
    prefill, decode = sample.pools[Role.PREFILL], sample.pools[Role.DECODE]
    assert prefill.prefill_tokens_waiting == 4000
    assert prefill.requests == 3 + 10  # waiting + finished in the window (none placed)
    assert prefill.kv_utilization is None
    assert decode.kv_utilization == pytest.approx(1 - 60 / 200)
    assert decode.requests == 1 + 10
    assert decode.prefill_tokens_waiting is None


def test_an_idle_router_reports_no_latency_and_idle_pools() -> None:
    registry = Registry(RegistryConfig(ttl_s=30.0))
    info = WorkerInfo(WorkerId("d0"), WorkerRole.DECODE, "d0:1", "d0:2", "tiny")
    registry.register(info, WorkerLoad(0, 0, 0, 50, 50), NOW)
    idle = RouterMetrics(registry, lambda: 0, clock=lambda: NOW)
    sample = parse_router_metrics(generate_latest(idle.prometheus).decode())
    assert (sample.ttft_ms, sample.tpot_ms) == (None, None)
    assert sample.pools[Role.DECODE].requests == 0  # the planner's "idle"
    assert sample.pools[Role.PREFILL].requests is None  # no prefill workers: unknown


def test_the_source_scrapes_http_and_holds_steady_when_unreachable() -> None:
    metrics = router_metrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        live = RouterMetricsSource(url=lambda c, s: f"http://127.0.0.1:{port}/metrics")
        sample = asyncio.run(live.sample(ref(), spec()))
        assert sample is not None and sample.ttft_ms == pytest.approx(900.0)
    finally:
        metrics.close()
    gone = RouterMetricsSource(timeout_s=1.0, url=lambda c, s: f"http://127.0.0.1:{port}/metrics")
    assert asyncio.run(gone.sample(ref(), spec())) is None


def test_the_default_url_is_the_router_services_metrics_port() -> None:
    s = spec()
    assert metrics_url(ref(), s) == (
        f"http://demo-router.serving.svc:{s.router.ports.metrics}/metrics"
    )
