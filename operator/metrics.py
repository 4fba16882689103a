"""Where the planner's numbers come from: a `MetricsSource` answers, per cluster, what
each pool looks like now. The router source asks the router's `GetClusterStatus`."""

from __future__ import annotations

import logging
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


class RouterStatusSource:
    """Load figures from the router's `GetClusterStatus` (plaintext gRPC, cluster-internal).

    NOTE: the router reports per-worker load but no latency aggregates yet, so TTFT/TPOT
    stay unset and the planner sizes pools by queue depth and KV use; a router with TLS
    or an auth token is not sampled (no signal: pools hold steady).
    """

    def __init__(self, timeout_s: float = 3.0) -> None:
        self.timeout_s = timeout_s

    async def sample(self, c: ClusterRef, spec: InferenceClusterSpec) -> ClusterSample | None:
        if spec.router.tls_secret_name or spec.router.auth_token_secret is not None:
            return None
        import grpc

        from kvferry._proto.kvferry.v1 import generation_pb2 as pb
        from kvferry._proto.kvferry.v1 import generation_pb2_grpc as pb_grpc

        target = f"{naming.router_name(c)}.{c.namespace}.svc:{spec.router.ports.grpc}"
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.GenerationStub(channel)  # type: ignore[no-untyped-call]
                status = await stub.GetClusterStatus(
                    pb.ClusterStatusRequest(), timeout=self.timeout_s
                )
        except grpc.aio.AioRpcError as exc:
            log.info("cluster %s/%s: router not sampled: %s", c.namespace, c.name, exc.code())
            return None
        waiting = 0
        in_flight = {Role.PREFILL: 0, Role.DECODE: 0}
        free = total = 0
        for w in status.workers:
            if w.role == pb.WORKER_ROLE_PREFILL:
                waiting += w.load.prefill_tokens_waiting
                in_flight[Role.PREFILL] += w.in_flight + w.load.num_waiting
            elif w.role == pb.WORKER_ROLE_DECODE:
                free += w.load.free_kv_blocks
                total += w.load.total_kv_blocks
                in_flight[Role.DECODE] += w.in_flight + w.load.num_waiting
        return ClusterSample(
            pools={
                Role.PREFILL: PoolObservation(
                    requests=in_flight[Role.PREFILL], prefill_tokens_waiting=waiting
                ),
                Role.DECODE: PoolObservation(
                    requests=in_flight[Role.DECODE],
                    kv_utilization=(1.0 - free / total) if total else None,
                ),
            }
        )
