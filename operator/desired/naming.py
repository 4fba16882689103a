"""Names, labels, selectors and owner references of a cluster's children."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvferry.operator.crd.spec import API_VERSION, Role

MANAGED_BY = "kvferry-operator"
CLUSTER_LABEL = "kvferry.io/cluster"
COMPONENT_LABEL = "app.kubernetes.io/component"
ROUTER = "router"

WORKER_PORT = 50061
"""Worker and KVTransfer gRPC port inside a worker pod."""

SEED_ANNOTATION = "kvferry.io/seed-replicas"
"""On a WorkerPool: the cluster's `spec.<pool>.replicas` it was last seeded from."""
CONFIG_HASH_ANNOTATION = "kvferry.io/config-hash"
"""On pod templates: a digest of the ConfigMap, so a settings change rolls the pods."""
TOPOLOGY_ANNOTATION = "kvferry.io/topology"
"""On a worker pod: JSON of its node's name and topology labels, written by the operator
once the pod is scheduled (the downward API can read pod annotations, not node labels)."""
TOPOLOGY_KEYS_ANNOTATION = "kvferry.io/topology-keys"
"""On a worker pod: the node label keys to copy into `TOPOLOGY_ANNOTATION`."""


@dataclass(frozen=True, slots=True)
class ClusterRef:
    """The InferenceCluster being reconciled."""

    name: str
    namespace: str
    uid: str
    generation: int = 0


def router_name(c: ClusterRef) -> str:
    return f"{c.name}-router"


def router_public_name(c: ClusterRef) -> str:
    return f"{c.name}-router-public"


def config_name(c: ClusterRef) -> str:
    return f"{c.name}-config"


def placement_config_name(c: ClusterRef) -> str:
    return f"{c.name}-placement"


def pool_name(c: ClusterRef, role: Role) -> str:
    """Name of the pool's WorkerPool, Deployment, headless Service and PDB."""
    return f"{c.name}-{role.value}"


def labels(c: ClusterRef, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kvferry",
        "app.kubernetes.io/instance": c.name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        CLUSTER_LABEL: c.name,
    }


def selector(c: ClusterRef, component: str) -> dict[str, str]:
    return {CLUSTER_LABEL: c.name, COMPONENT_LABEL: component}


def selector_string(c: ClusterRef, component: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(c, component).items())


def owner_reference(c: ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceCluster",
        "name": c.name,
        "uid": c.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(c: ClusterRef, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": c.namespace,
        "labels": labels(c, component),
        "ownerReferences": [owner_reference(c)],
    }
