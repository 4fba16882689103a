"""`WorkerPool`: one pool of an `InferenceCluster`, with a scale subresource.

Why a child kind: the scale subresource maps ONE replicas path per resource, and a
cluster has two pools. A `WorkerPool` per pool (owned by the cluster, named
`<cluster>-prefill` / `<cluster>-decode`) gives each its own `/scale`, so
`kubectl scale workerpool/<name> --replicas=N`, an HPA or a KEDA ScaledObject can target a
pool, while the cluster's spec keeps the pod template, bounds and objectives. The operator
makes the pool's Deployment follow `spec.replicas`, clamped to [minReplicas, maxReplicas].
"""
# ruff: noqa: RUF009  (crd_field() is a dataclass field specifier, like dataclasses.field)

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvferry.operator.crd.fields import Rule, crd_field
from kvferry.operator.crd.spec import Role


@dataclass(frozen=True, slots=True)
class WorkerPoolSpec:
    """A pool's size and bounds (the rest of the pool lives in its InferenceCluster)."""

    cluster: str = crd_field("The owning InferenceCluster.", min_length=1)
    role: Role = crd_field("prefill or decode.")
    replicas: int = crd_field("Desired pods (the scale subresource's spec path).", minimum=0)
    min_replicas: int = crd_field("Fewest pods.", default=0, minimum=0)
    max_replicas: int = crd_field("Most pods.", default=8, minimum=1)

    CRD_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be <= maxReplicas",
            check=lambda p: p.min_replicas <= p.max_replicas,
        ),
    )
