"""Where the planner's numbers come from: a `MetricsSource` answers, per cluster, what
each pool looks like now. The router source scrapes the router's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kvferry.operator.crd.spec import InferenceClusterSpec, Role
from kvferry.operator.desired import naming
from kvferry.operator.desired.naming import ClusterRef
from kvferry.operator.planner import PoolObservation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterSample:
    pools: dict[Role, PoolObservation] = field(default_factory=dict)
    ttft_ms: float | None = None
    tpot_ms: float | None = None


class MetricsSource(Protocol):
    async def sample(self, c: ClusterRef, spec: InferenceClusterSpec) -> ClusterSample | None:
        """The cluster's figures now; None when they cannot be read (hold steady)."""
        ...


class NoMetrics:
    """No source: pools stay where kubectl, an HPA or the spec put them."""

    async def sample(self, c: ClusterRef, spec: InferenceClusterSpec) -> ClusterSample | None:
        return None


class RouterMetricsSource:
    """Figures from the router's Prometheus endpoint (`--metrics-port`): plain HTTP inside
    the cluster and no token, so a router with TLS or an auth token on its client port is
    sampled too. Unreachable or unparsable: None (pools hold steady)."""

    def __init__(
        self,
        timeout_s: float = 3.0,
        url: Callable[[ClusterRef, InferenceClusterSpec], str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.url = url or metrics_url

    async def sample(self, c: ClusterRef, spec: InferenceClusterSpec) -> ClusterSample | None:
        url = self.url(c, spec)
        try:
            text = await asyncio.to_thread(_fetch, url, self.timeout_s)
            return parse_router_metrics(text)
        except (OSError, ValueError) as exc:
            log.info("cluster %s/%s: router not sampled: %s", c.namespace, c.name, exc)
            return None


def metrics_url(c: ClusterRef, spec: InferenceClusterSpec) -> str:
    """The router Service's metrics port, by cluster DNS."""
    return f"http://{naming.router_name(c)}.{c.namespace}.svc:{spec.router.ports.metrics}/metrics"


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        body: bytes = reply.read(8 << 20)
    return body.decode()


_POOL_ROLES = {Role.PREFILL.value: Role.PREFILL, Role.DECODE.value: Role.DECODE}
LATENCY_QUANTILE = "0.9"
"""The percentile compared with the objectives: an objective holds when 9 in 10
requests meet it."""


def parse_router_metrics(text: str) -> ClusterSample:
    """The planner's view of a `/metrics` scrape (see services/router/metrics.py)."""
    from prometheus_client.parser import text_string_to_metric_families

    by_role: dict[str, dict[Role, float]] = {}
    finished = 0.0
    latency: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            role = _POOL_ROLES.get(s.labels.get("role", ""))
            if s.name.startswith("kvferry_pool_") and role is not None:
                by_role.setdefault(s.name, {})[role] = s.value
            elif (
                s.name == "kvferry_router_window_requests" and s.labels.get("outcome") == "finished"
            ):
                finished = s.value
            elif (
                s.name == "kvferry_router_window_latency_seconds"
                and s.labels.get("quantile") == LATENCY_QUANTILE
            ):
                latency[s.labels.get("metric", "")] = s.value * 1e3

    def pool(name: str, role: Role) -> float | None:
        return by_role.get(name, {}).get(role)

    pools = {}
    for role in Role:
        active = [
            v
            for v in (
                pool("kvferry_pool_requests_in_flight", role),
                pool("kvferry_pool_requests_waiting", role),
            )
            if v is not None
        ]
        # NOTE: requests that finished in the window keep a pool from counting as idle
        # even when nothing is in flight at the instant of the scrape.
        requests = int(sum(active) + finished) if active else None
        tokens = pool("kvferry_pool_prefill_tokens_waiting", role)
        pools[role] = PoolObservation(
            requests=requests,
            prefill_tokens_waiting=int(tokens)
            if role is Role.PREFILL and tokens is not None
            else None,
            kv_utilization=pool("kvferry_pool_kv_blocks_used_ratio", role)
            if role is Role.DECODE
            else None,
        )
    return ClusterSample(pools=pools, ttft_ms=latency.get("ttft"), tpot_ms=latency.get("tpot"))
