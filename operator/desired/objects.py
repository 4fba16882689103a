"""`desired(cluster, spec, observed) -> objects`: everything one InferenceCluster should
own, as plain manifests. Pure: the apply layer makes the cluster match this list.

Owned by the cluster (so deleting it deletes them, through the garbage collector):
the router Deployment and Service (plus a public Service for a LoadBalancer/NodePort
router: the registry port stays cluster-internal), a ConfigMap of engine settings, and
per pool a `WorkerPool` (the scale handle), a Deployment, a headless Service and a
PodDisruptionBudget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvferry import topology
from kvferry.operator.crd.schema import parse
from kvferry.operator.crd.spec import API_VERSION, InferenceClusterSpec, PoolSpec, Role
from kvferry.operator.desired import naming, placement, pods
from kvferry.operator.desired.naming import ClusterRef


@dataclass(frozen=True, slots=True)
class ObservedPool:
    """A pool's WorkerPool as it stands (scaled by kubectl, an HPA or the planner)."""

    replicas: int
    seeded_from: int | None
    """The cluster's `spec.<pool>.replicas` the WorkerPool was last seeded from."""


@dataclass(frozen=True, slots=True)
class Observed:
    image: str
    """The image to run when the spec names none (the operator's own version)."""
    pools: Mapping[Role, ObservedPool] = field(default_factory=dict)


def parse_spec(data: Mapping[str, Any]) -> InferenceClusterSpec:
    """A resource's spec, checked against the schema (what the API server also checks)
    and against the components' own parsers (the router's placement file)."""
    spec = parse(InferenceClusterSpec, dict(data), "spec")
    placement.placement_data(spec)
    return spec


def pool_replicas(pool: PoolSpec, observed: ObservedPool | None) -> int:
    """The WorkerPool's replicas: kept as scaled, unless the cluster's `replicas` changed
    since it was seeded (then the new value wins, as a user's edit of the cluster)."""
    if observed is None or observed.seeded_from != pool.replicas:
        return int(pool.replicas)
    return observed.replicas


def clamp(replicas: int, pool: PoolSpec) -> int:
    return int(max(pool.min_replicas, min(pool.max_replicas, replicas)))


def engine_config(spec: InferenceClusterSpec) -> dict[str, str]:
    """The ConfigMap's data; keys in `pods.ENGINE_FLAGS` become worker flags."""
    e, m = spec.engine, spec.model
    values: dict[str, object | None] = {
        "KVFERRY_MODEL_NAME": m.name,
        "KVFERRY_DTYPE": m.dtype.value,
        "KVFERRY_MAX_MODEL_LEN": m.max_model_len,
        "KVFERRY_BLOCK_SIZE": e.block_size,
        "KVFERRY_MAX_NUM_SEQS": e.max_num_seqs,
        "KVFERRY_MAX_NUM_BATCHED_TOKENS": e.max_num_batched_tokens,
        "KVFERRY_GPU_MEMORY_UTILIZATION": e.gpu_memory_utilization,
        "KVFERRY_KV_MAX_CHUNK_BYTES": spec.kv_transfer.max_chunk_bytes,
        "KVFERRY_KV_COMPRESSION": spec.kv_transfer.compression.value,
        "KVFERRY_TOPOLOGY_LABELS": json.dumps(topology_keys(spec), sort_keys=True),
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def topology_keys(spec: InferenceClusterSpec) -> dict[str, str]:
    """Canonical topology level (`kvferry.topology`) -> the node label key that holds it."""
    t = spec.topology
    return {
        topology.NVLINK_DOMAIN: t.nvlink_domain_label,
        topology.RACK: t.rack_label,
        topology.ZONE: t.zone_label,
    }


def config_hash(data: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()[:16]


def desired(c: ClusterRef, spec: InferenceClusterSpec, observed: Observed) -> list[dict[str, Any]]:
    """Every object the cluster owns, in apply order (config first, router, then pools)."""
    image = spec.image or observed.image
    config = engine_config(spec)
    digest = config_hash(config)
    routing = {placement.FILE: placement.placement_file(spec)}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": naming.metadata(c, naming.config_name(c), "config"),
            "data": config,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": naming.metadata(c, naming.placement_config_name(c), "config"),
            "data": routing,
        },
        *_router_objects(c, spec, image, config_hash(routing)),
    ]
    for role in Role:
        objects += _pool_objects(c, spec, role, image, config, digest, observed.pools.get(role))
    return objects


def _router_objects(
    c: ClusterRef, spec: InferenceClusterSpec, image: str, digest: str
) -> list[dict[str, Any]]:
    ports = spec.router.ports
    template = pods.router_pod(c, spec, image)
    # NOTE: the router reads its placement file once: a changed file rolls it.
    template["metadata"]["annotations"] = {naming.CONFIG_HASH_ANNOTATION: digest}
    service_ports = [
        {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": proto}
        for name, port, proto in (
            ("grpc", ports.grpc, "grpc"),
            ("registry", ports.registry, "grpc"),
            ("http", ports.http, "http"),
            ("metrics", ports.metrics, "http"),
        )
    ]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": naming.metadata(c, naming.router_name(c), naming.ROUTER),
            "spec": {
                "replicas": spec.router.replicas,
                "selector": {"matchLabels": naming.selector(c, naming.ROUTER)},
                # One router holds the worker registry: replace it, never run two.
                "strategy": {"type": "Recreate"},
                "template": template,
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": naming.metadata(c, naming.router_name(c), naming.ROUTER),
            "spec": {
                "type": "ClusterIP",
                "selector": naming.selector(c, naming.ROUTER),
                "ports": service_ports,
            },
        },
    ]
    if spec.router.service_type != "ClusterIP":
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": naming.metadata(c, naming.router_public_name(c), naming.ROUTER),
                "spec": {
                    "type": spec.router.service_type,
                    "selector": naming.selector(c, naming.ROUTER),
                    "ports": [p for p in service_ports if p["name"] in ("grpc", "http")],
                },
            }
        )
    return objects


def _pool_objects(
    c: ClusterRef,
    spec: InferenceClusterSpec,
    role: Role,
    image: str,
    config: dict[str, str],
    digest: str,
    observed: ObservedPool | None,
) -> list[dict[str, Any]]:
    pool = spec.pool(role)
    name = naming.pool_name(c, role)
    replicas = pool_replicas(pool, observed)
    template = pods.worker_pod(c, spec, role, image, config)
    annotations = template["metadata"].setdefault("annotations", {})
    annotations[naming.CONFIG_HASH_ANNOTATION] = digest
    annotations[naming.TOPOLOGY_KEYS_ANNOTATION] = config["KVFERRY_TOPOLOGY_LABELS"]
    worker_pool_meta = naming.metadata(c, name, role.value)
    worker_pool_meta["annotations"] = {naming.SEED_ANNOTATION: str(pool.replicas)}
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "WorkerPool",
            "metadata": worker_pool_meta,
            "spec": {
                "cluster": c.name,
                "role": role.value,
                "replicas": replicas,
                "minReplicas": pool.min_replicas,
                "maxReplicas": pool.max_replicas,
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": naming.metadata(c, name, role.value),
            "spec": {
                "replicas": clamp(replicas, pool),
                "selector": {"matchLabels": naming.selector(c, role.value)},
                # GPUs are scarce: replace pods one at a time without a surge pod.
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                },
                "template": template,
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": naming.metadata(c, name, role.value),
            "spec": {
                "clusterIP": "None",
                "selector": naming.selector(c, role.value),
                "ports": [
                    {
                        "name": "grpc",
                        "port": naming.WORKER_PORT,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                        "appProtocol": "grpc",
                    }
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": naming.metadata(c, name, role.value),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": naming.selector(c, role.value)},
            },
        },
    ]
