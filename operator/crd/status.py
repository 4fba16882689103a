"""`InferenceCluster` and `WorkerPool` status: conditions with named reasons, the
generation they describe, per-pool replica counts and observed latencies. No free-form
`state` field: `kubectl wait --for=condition=Ready` is the interface."""
# ruff: noqa: RUF009  (crd_field() is a dataclass field specifier, like dataclasses.field)

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvferry.operator.crd.fields import crd_field


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    """Every reason a condition can carry (CamelCase, as Kubernetes expects)."""

    VALIDATION_FAILED = "ValidationFailed"
    """The spec breaks a rule; fix the resource (not retried until it changes)."""
    RECONCILING = "Reconciling"
    """Children are being created or updated."""
    WAITING_FOR_PODS = "WaitingForPods"
    """Children exist; not every pod is ready yet."""
    ALL_PODS_READY = "AllPodsReady"
    """Router and both pools have all their desired pods ready."""
    POOL_UNAVAILABLE = "PoolUnavailable"
    """A pool that should have pods has none ready."""
    SCALING = "Scaling"
    """A pool's replicas are moving to a new desired count."""
    AS_EXPECTED = "AsExpected"
    """Nothing to report."""
    API_ERROR = "ApiError"
    """The Kubernetes API failed; the operator retries with backoff."""


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType = crd_field("Ready, Progressing or Degraded.")
    status: ConditionStatus = crd_field("True, False or Unknown.")
    reason: Reason = crd_field("Machine-readable reason (CamelCase).")
    message: str = crd_field("Human-readable detail.", default="")
    last_transition_time: str | None = crd_field(
        "When status last changed (RFC 3339).", default=None
    )
    observed_generation: int | None = crd_field(
        "The metadata.generation this condition describes.", default=None, minimum=0
    )


@dataclass(frozen=True, slots=True)
class PoolStatus:
    replicas: int = crd_field("Pods that exist.", default=0, minimum=0)
    ready: int = crd_field("Pods ready.", default=0, minimum=0)
    desired: int = crd_field("Replicas the pool is asked for.", default=0, minimum=0)


@dataclass(frozen=True, slots=True)
class ObservedLatency:
    ttft_ms: float | None = crd_field("Observed time to first token (ms).", default=None)
    tpot_ms: float | None = crd_field("Observed time per output token (ms).", default=None)
    sampled_at: str | None = crd_field("When it was sampled (RFC 3339).", default=None)


@dataclass(frozen=True, slots=True)
class InferenceClusterStatus:
    """Observed state, written by the operator."""

    observed_generation: int | None = crd_field(
        "The metadata.generation last reconciled.", default=None, minimum=0
    )
    conditions: list[Condition] | None = crd_field("Ready, Progressing, Degraded.", default=None)
    prefill: PoolStatus | None = crd_field("The prefill pool.", default=None)
    decode: PoolStatus | None = crd_field("The decode pool.", default=None)
    router: PoolStatus | None = crd_field("The router.", default=None)
    observed: ObservedLatency | None = crd_field("Latency as the router reports it.", default=None)


@dataclass(frozen=True, slots=True)
class WorkerPoolStatus:
    """Scale status (what `kubectl scale` and an HPA read)."""

    replicas: int = crd_field("Pods of the pool's Deployment.", default=0, minimum=0)
    ready_replicas: int = crd_field("Ready pods.", default=0, minimum=0)
    selector: str = crd_field("Label selector of the pool's pods (for the HPA).", default="")
    observed_generation: int | None = crd_field(
        "The metadata.generation last acted on.", default=None, minimum=0
    )
