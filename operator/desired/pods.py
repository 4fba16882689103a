"""Pod templates: secure defaults, volumes, topology placement and the containers'
command lines (the `kvferry router` / `kvferry worker` flags of docs/serving.md)."""

from __future__ import annotations

import copy
from typing import Any

from kvferry.operator.crd.schema import to_json
from kvferry.operator.crd.spec import InferenceClusterSpec, Pairing, PoolSpec, Role, TopologySpec
from kvferry.operator.desired import naming, placement
from kvferry.operator.desired.naming import ClusterRef

RUN_AS = 10001
MODEL_MOUNT = "/models"
PODINFO_MOUNT = "/etc/kvferry/podinfo"
TLS_MOUNT = "/etc/kvferry/tls"
AUTH_MOUNT = "/etc/kvferry/auth"
PLACEMENT_MOUNT = "/etc/kvferry/placement"
WORKER_GRACE_S = 60
"""Workers drain on SIGTERM for up to 30 s (services/worker/main.py), plus margin."""

POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def model_arg(spec: InferenceClusterSpec) -> str:
    """What `--model` gets: the preset name, or the folder where the volume is mounted."""
    src = spec.model.source
    if src.preset is not None:
        return str(src.preset)
    sub = src.pvc.sub_path.strip("/") if src.pvc is not None else ""
    return f"{MODEL_MOUNT}/{sub}" if sub else MODEL_MOUNT


def model_volume(spec: InferenceClusterSpec) -> dict[str, Any] | None:
    src = spec.model.source
    if src.pvc is not None:
        return {
            "name": "model",
            "persistentVolumeClaim": {"claimName": src.pvc.claim_name, "readOnly": True},
        }
    if src.host_path is not None:
        return {"name": "model", "hostPath": {"path": src.host_path.path, "type": "Directory"}}
    return None


def _env() -> list[dict[str, Any]]:
    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field("NODE_NAME", "spec.nodeName"),
        {"name": "HOME", "value": "/tmp"},
    ]


def _base_volumes(spec: InferenceClusterSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    model = model_volume(spec)
    if model is not None:
        volumes.append(model)
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    return volumes, mounts


def _grpc_probe(port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {"grpc": {"port": port}, "periodSeconds": period, "failureThreshold": failures}


def router_pod(c: ClusterRef, spec: InferenceClusterSpec, image: str) -> dict[str, Any]:
    ports = spec.router.ports
    args = [
        "router",
        "--host=0.0.0.0",
        f"--port={ports.grpc}",
        f"--registry-port={ports.registry}",
        f"--metrics-port={ports.metrics}",
        f"--model={model_arg(spec)}",
        f"--placement-config={PLACEMENT_MOUNT}/{placement.FILE}",
    ]
    volumes, mounts = _base_volumes(spec)
    volumes.append({"name": "placement", "configMap": {"name": naming.placement_config_name(c)}})
    mounts.append({"name": "placement", "mountPath": PLACEMENT_MOUNT, "readOnly": True})
    if spec.router.tls_secret_name:
        volumes.append({"name": "tls", "secret": {"secretName": spec.router.tls_secret_name}})
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        args += [f"--tls-cert={TLS_MOUNT}/tls.crt", f"--tls-key={TLS_MOUNT}/tls.key"]
    token = spec.router.auth_token_secret
    if token is not None:
        volumes.append({"name": "auth", "secret": {"secretName": token.name}})
        mounts.append({"name": "auth", "mountPath": AUTH_MOUNT, "readOnly": True})
        args.append(f"--auth-token-file={AUTH_MOUNT}/{token.key}")
    container: dict[str, Any] = {
        "name": "router",
        "image": image,
        "command": ["kvferry"],
        "args": args,
        "env": _env(),
        "ports": [
            {"name": "grpc", "containerPort": ports.grpc, "protocol": "TCP"},
            {"name": "registry", "containerPort": ports.registry, "protocol": "TCP"},
            {"name": "http", "containerPort": ports.http, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports.metrics, "protocol": "TCP"},
        ],
        # NOTE: the registry port is plaintext gRPC in both modes, so probe it.
        "readinessProbe": _grpc_probe(ports.registry, period=5, failures=3),
        "livenessProbe": _grpc_probe(ports.registry, period=10, failures=6),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    if spec.router.resources is not None:
        container["resources"] = to_json(spec.router.resources)
    return {
        "metadata": {"labels": naming.labels(c, naming.ROUTER)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY,
            "containers": [container],
            "volumes": volumes,
        },
    }


ENGINE_FLAGS: dict[str, str] = {
    "KVFERRY_DTYPE": "--dtype",
    "KVFERRY_MAX_MODEL_LEN": "--max-model-len",
    "KVFERRY_BLOCK_SIZE": "--block-size",
    "KVFERRY_MAX_NUM_SEQS": "--max-num-seqs",
    "KVFERRY_MAX_NUM_BATCHED_TOKENS": "--max-num-batched-tokens",
    "KVFERRY_GPU_MEMORY_UTILIZATION": "--gpu-memory-utilization",
    "KVFERRY_KV_MAX_CHUNK_BYTES": "--kv-max-chunk-bytes",
    "KVFERRY_KV_COMPRESSION": "--kv-compression",
}
"""ConfigMap keys that become worker flags (`--flag=$(KEY)`, expanded by the kubelet)."""


def worker_pod(
    c: ClusterRef,
    spec: InferenceClusterSpec,
    role: Role,
    image: str,
    config: dict[str, str],
) -> dict[str, Any]:
    pool = spec.pool(role)
    registry = f"{naming.router_name(c)}.{c.namespace}.svc:{spec.router.ports.registry}"
    args = [
        "worker",
        f"--role={role.value}",
        "--host=$(POD_IP)",
        f"--port={naming.WORKER_PORT}",
        "--worker-id=$(POD_NAME)",
        f"--router={registry}",
        f"--model={model_arg(spec)}",
        f"--podinfo-dir={PODINFO_MOUNT}",
    ]
    args += [f"{flag}=$({key})" for key, flag in ENGINE_FLAGS.items() if key in config]
    volumes, mounts = _base_volumes(spec)
    volumes.append(
        {
            "name": "podinfo",
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        }
    )
    mounts.append({"name": "podinfo", "mountPath": PODINFO_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": ["kvferry"],
        "args": args,
        "env": _env(),
        "envFrom": [{"configMapRef": {"name": naming.config_name(c)}}],
        "ports": [{"name": "grpc", "containerPort": naming.WORKER_PORT, "protocol": "TCP"}],
        "startupProbe": _grpc_probe(naming.WORKER_PORT, period=10, failures=60),
        "readinessProbe": _grpc_probe(naming.WORKER_PORT, period=5, failures=3),
        "livenessProbe": _grpc_probe(naming.WORKER_PORT, period=10, failures=6),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    if pool.resources is not None:
        container["resources"] = to_json(pool.resources)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": WORKER_GRACE_S,
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
        "affinity": affinity(c, role, spec.topology),
        "topologySpreadConstraints": spread(c, role, spec.topology),
    }
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pool.tolerations]
    template = {"metadata": {"labels": naming.labels(c, role.value)}, "spec": pod_spec}
    return apply_overrides(template, pool)


def affinity(c: ClusterRef, role: Role, topo: TopologySpec) -> dict[str, Any]:
    """Decode pods go where prefill pods are (same NVLink domain); prefill pods prefer
    decode pods' domains. Only decode → prefill can be `required`: requiring it both ways
    would leave the first pod of either pool unschedulable."""
    peer = Role.PREFILL if role is Role.DECODE else Role.DECODE
    term = {
        "labelSelector": {"matchLabels": naming.selector(c, peer.value)},
        "topologyKey": topo.nvlink_domain_label,
    }
    if role is Role.DECODE and topo.pairing is Pairing.REQUIRED:
        return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    weight = 100 if role is Role.DECODE else 50
    return {
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": weight, "podAffinityTerm": term}
            ]
        }
    }


def spread(c: ClusterRef, role: Role, topo: TopologySpec) -> list[dict[str, Any]]:
    """Spread each pool across zones, then racks (soft: GPUs are where they are)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": naming.selector(c, role.value)},
        }
        for key in (topo.zone_label, topo.rack_label)
    ]


def apply_overrides(template: dict[str, Any], pool: PoolSpec) -> dict[str, Any]:
    """Merge the pool's `template` over the generated one: maps merge, containers merge by
    name, other lists are replaced. Selector labels cannot be overridden."""
    if not pool.template:
        return template
    merged = _merge(copy.deepcopy(template), copy.deepcopy(pool.template))
    merged["metadata"]["labels"].update(template["metadata"]["labels"])
    return dict(merged)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        for key, value in over.items():
            base[key] = _merge(base[key], value) if key in base else value
        return base
    if isinstance(base, list) and isinstance(over, list) and _named(base) and _named(over):
        by_name = {item["name"]: item for item in base}
        for item in over:
            if item["name"] in by_name:
                _merge(by_name[item["name"]], item)
            else:
                base.append(item)
        return base
    return over


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)
