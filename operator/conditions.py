"""Status from what the children report: conditions with named reasons, per-pool counts.
Pure; `now` is passed in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvferry.operator.crd.spec import Role
from kvferry.operator.crd.status import ConditionStatus, ConditionType, Reason


@dataclass(frozen=True, slots=True)
class Replicas:
    """A Deployment's counts: pods that exist, pods ready, and what it is asked for."""

    replicas: int = 0
    ready: int = 0
    desired: int = 0
    exists: bool = True
    """False while the Deployment has not been created (never settled)."""

    @property
    def settled(self) -> bool:
        return self.exists and self.ready >= self.desired and self.replicas == self.desired

    def as_status(self) -> dict[str, int]:
        return {"replicas": self.replicas, "ready": self.ready, "desired": self.desired}


def replicas_of(deployment: Mapping[str, Any] | None) -> Replicas:
    if deployment is None:
        return Replicas(exists=False)
    status = deployment.get("status") or {}
    return Replicas(
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        desired=int((deployment.get("spec") or {}).get("replicas") or 0),
    )


def condition(
    ctype: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: str,
    previous: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A condition; `lastTransitionTime` moves only when `status` changes."""
    since = now
    for old in previous:
        if old.get("type") == ctype.value and old.get("status") == status.value:
            since = str(old.get("lastTransitionTime") or now)
    return {
        "type": ctype.value,
        "status": status.value,
        "reason": reason.value,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def invalid_conditions(
    message: str, generation: int, now: str, previous: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    r = Reason.VALIDATION_FAILED
    return [
        condition(
            ConditionType.READY, ConditionStatus.FALSE, r, message, generation, now, previous
        ),
        condition(
            ConditionType.PROGRESSING, ConditionStatus.FALSE, r, message, generation, now, previous
        ),
        condition(
            ConditionType.DEGRADED, ConditionStatus.TRUE, r, message, generation, now, previous
        ),
    ]


def cluster_conditions(
    router: Replicas,
    pools: Mapping[Role, Replicas],
    generation: int,
    now: str,
    previous: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Ready when every desired pod is ready; Progressing while counts move; Degraded
    when a pool that should serve has pods but none ready."""
    parts = {"router": router, **{role.value: r for role, r in pools.items()}}
    waiting = [
        f"{n} {r.ready}/{r.desired}" if r.exists else f"{n} not created"
        for n, r in parts.items()
        if not r.settled
    ]
    scaling = [n for n, r in parts.items() if r.replicas != r.desired]
    down = [n for n, r in parts.items() if r.desired > 0 and r.replicas > 0 and r.ready == 0]
    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE

    def cond(t: ConditionType, s: ConditionStatus, reason: Reason, msg: str) -> dict[str, Any]:
        return condition(t, s, reason, msg, generation, now, previous)

    if waiting:
        ready = cond(
            ConditionType.READY, F, Reason.WAITING_FOR_PODS, "waiting: " + ", ".join(waiting)
        )
    else:
        ready = cond(ConditionType.READY, T, Reason.ALL_PODS_READY, "all pods ready")
    if scaling:
        progressing = cond(
            ConditionType.PROGRESSING, T, Reason.SCALING, "scaling: " + ", ".join(scaling)
        )
    elif waiting:
        progressing = cond(ConditionType.PROGRESSING, T, Reason.RECONCILING, "rolling out")
    else:
        progressing = cond(ConditionType.PROGRESSING, F, Reason.AS_EXPECTED, "")
    if down:
        degraded = cond(
            ConditionType.DEGRADED, T, Reason.POOL_UNAVAILABLE, "no ready pod: " + ", ".join(down)
        )
    else:
        degraded = cond(ConditionType.DEGRADED, F, Reason.AS_EXPECTED, "")
    return [ready, progressing, degraded]
