"""The `InferenceCluster` spec (group kvferry.io, version v1alpha1): the one source of
its Python types, its OpenAPI schema and its validation rules (see `fields.py`)."""
# ruff: noqa: RUF009  (crd_field() is a dataclass field specifier, like dataclasses.field)

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from kvferry.operator.crd.fields import JsonObject, Quantity, Rule, crd_field

GROUP = "kvferry.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class DType(enum.StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Pairing(enum.StrEnum):
    """How strictly prefill and decode pods must share an NVLink domain."""

    REQUIRED = "required"
    PREFERRED = "preferred"


class Compression(enum.StrEnum):
    NONE = "none"
    FP8 = "fp8"
    """e4m3 with a scale per block and head: half the bytes of a bf16 cache, lossy."""


class PlacementPolicy(enum.StrEnum):
    """The router's built-in placement policies (docs/placement.md)."""

    KVFERRY = "kvferry"
    CACHE_AWARE = "cache-aware"
    LEAST_LOADED = "least-loaded"
    RANDOM = "random"
    ROUND_ROBIN = "round-robin"


class Role(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True)
class PvcSource:
    """A PersistentVolumeClaim holding the model folder."""

    claim_name: str = crd_field("Name of the PVC (same namespace).", min_length=1)
    sub_path: str = crd_field("Folder inside the volume holding config.json.", default="")


@dataclass(frozen=True, slots=True)
class HostPathSource:
    """A folder on every GPU node (pre-staged weights)."""

    path: str = crd_field("Absolute path of the model folder on the node.", pattern="^/")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the Hugging Face folder lives: exactly one of pvc, hostPath or preset."""

    pvc: PvcSource | None = crd_field("A PVC holding the model folder.", default=None)
    host_path: HostPathSource | None = crd_field("A host folder.", default=None)
    preset: str | None = crd_field(
        "A built-in preset (`tiny`, or a shape-only preset with dummy weights).",
        default=None,
        min_length=1,
    )

    CRD_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="[has(self.pvc), has(self.hostPath), has(self.preset)].filter(x, x).size() == 1",
            message="set exactly one of pvc, hostPath or preset",
            check=lambda s: sum(x is not None for x in (s.pvc, s.host_path, s.preset)) == 1,
        ),
    )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The model every worker and the router serve."""

    name: str = crd_field(
        "Served model name (what clients ask for and labels show).",
        min_length=1,
        max_length=63,
    )
    source: ModelSource = crd_field("Where the weights and tokenizer come from.")
    dtype: DType = crd_field("Weights and activations dtype.", default=DType.AUTO)
    max_model_len: int | None = crd_field(
        "Longest prompt + output in tokens; unset: the model's own limit.",
        default=None,
        minimum=16,
    )


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str = crd_field("Secret name (same namespace).", min_length=1)
    key: str = crd_field("Key inside the Secret.", default="token", min_length=1)


@dataclass(frozen=True, slots=True)
class RouterPorts:
    grpc: int = crd_field(
        "Client gRPC port (Generation API).", default=50051, minimum=1, maximum=65535
    )
    registry: int = crd_field(
        "Workers' registry port (cluster-internal).", default=50052, minimum=1, maximum=65535
    )
    http: int = crd_field(
        "OpenAI-compatible HTTP port (reserved on the Service).",
        default=8000,
        minimum=1,
        maximum=65535,
    )
    metrics: int = crd_field(
        "Prometheus metrics port (reserved on the Service).", default=9090, minimum=1, maximum=65535
    )

    CRD_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="[self.grpc, self.registry, self.http, self.metrics]"
            ".all(p, [self.grpc, self.registry, self.http, self.metrics]"
            ".filter(q, q == p).size() == 1)",
            message="router ports must be distinct",
            check=lambda p: len({p.grpc, p.registry, p.http, p.metrics}) == 4,
        ),
    )


@dataclass(frozen=True, slots=True)
class ResourceRequirements:
    """Container resources, as in a Pod (`nvidia.com/gpu` goes in limits)."""

    limits: dict[str, Quantity] | None = crd_field("Resource limits.", default=None)
    requests: dict[str, Quantity] | None = crd_field("Resource requests.", default=None)


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    """How the router pairs prefill and decode workers (docs/placement.md)."""

    policy: PlacementPolicy = crd_field(
        "Built-in policy the pipeline starts from.", default=PlacementPolicy.KVFERRY
    )
    config: JsonObject | None = crd_field(
        "Keys of a placement config file applied over the policy (candidates, shortlist, "
        "filters, scorers, picker, transfer, ...: docs/placement.md); the operator checks "
        "them with the router's own parser.",
        default=None,
    )


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """The client-facing router."""

    replicas: int = crd_field(
        "Router pods. NOTE: workers register with one router, so this is 0 or 1 until the "
        "registry is shared.",
        default=1,
        minimum=0,
        maximum=1,
    )
    ports: RouterPorts = crd_field("Ports.", default_factory=RouterPorts)
    tls_secret_name: str | None = crd_field(
        "A kubernetes.io/tls Secret: the client port serves TLS.", default=None, min_length=1
    )
    auth_token_secret: SecretKeyRef | None = crd_field(
        "A Secret holding the bearer token clients must send.", default=None
    )
    resources: ResourceRequirements | None = crd_field("Router resources.", default=None)
    service_type: str = crd_field(
        "Service type of the router Service.",
        default="ClusterIP",
        pattern="^(ClusterIP|NodePort|LoadBalancer)$",
    )
    placement: PlacementSpec = crd_field(
        "Placement: which prefill and decode worker serve each request.",
        default_factory=PlacementSpec,
    )


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One worker pool (prefill or decode)."""

    replicas: int = crd_field(
        "Initial replicas; later set by `kubectl scale`, an HPA or the planner on the "
        "WorkerPool. Changing it here re-seeds the pool.",
        default=1,
        minimum=0,
    )
    min_replicas: int = crd_field("Fewest replicas the planner keeps.", default=1, minimum=0)
    max_replicas: int = crd_field("Most replicas the planner sets.", default=8, minimum=1)
    autoscale: bool = crd_field(
        "Let the operator's planner size this pool against the objectives (turn off when an "
        "HPA or KEDA targets the WorkerPool).",
        default=True,
    )
    resources: ResourceRequirements | None = crd_field(
        "Worker resources, e.g. limits: {nvidia.com/gpu: 1}.", default=None
    )
    node_selector: dict[str, str] | None = crd_field("Pod nodeSelector.", default=None)
    tolerations: list[JsonObject] | None = crd_field("Pod tolerations (verbatim).", default=None)
    template: JsonObject | None = crd_field(
        "Pod template overrides merged over the generated one (metadata and spec).",
        default=None,
    )

    CRD_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be <= maxReplicas",
            check=lambda p: p.min_replicas <= p.max_replicas,
        ),
        Rule(
            cel="self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas",
            message="replicas must be within [minReplicas, maxReplicas]",
            check=lambda p: p.min_replicas <= p.replicas <= p.max_replicas,
        ),
    )


@dataclass(frozen=True, slots=True)
class Objectives:
    """Latency objectives the planner keeps each pool under."""

    ttft_ms: float = crd_field("Time to first token objective (ms); sizes prefill.", minimum=1)
    tpot_ms: float = crd_field("Time per output token objective (ms); sizes decode.", minimum=1)


@dataclass(frozen=True, slots=True)
class TopologySpec:
    """Node labels that place pods so prefill/decode pairs share fast links."""

    nvlink_domain_label: str = crd_field(
        "Node label of the NVLink domain.", default="nvidia.com/gpu.clique", min_length=1
    )
    rack_label: str = crd_field(
        "Node label of the rack.", default="topology.kvferry.io/rack", min_length=1
    )
    zone_label: str = crd_field(
        "Node label of the zone.", default="topology.kubernetes.io/zone", min_length=1
    )
    pairing: Pairing = crd_field(
        "required: decode pods only run in an NVLink domain with a prefill pod; preferred: try to.",
        default=Pairing.PREFERRED,
    )


@dataclass(frozen=True, slots=True)
class KVTransferSpec:
    """How KV blocks travel from prefill to decode."""

    max_chunk_bytes: int = crd_field(
        "Largest KV chunk per gRPC message.", default=4 * 1024 * 1024, minimum=4096
    )
    compression: Compression = crd_field("Chunk compression.", default=Compression.NONE)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Engine settings shared by every worker (the cluster's ConfigMap)."""

    block_size: int | None = crd_field("Tokens per KV block.", default=None, minimum=1)
    max_num_seqs: int | None = crd_field("Most sequences per batch.", default=None, minimum=1)
    max_num_batched_tokens: int | None = crd_field(
        "Token budget per engine step.", default=None, minimum=1
    )
    gpu_memory_utilization: float | None = crd_field(
        "Fraction of GPU memory the engine may use.", default=None, minimum=0.05, maximum=1.0
    )


@dataclass(frozen=True, slots=True)
class InferenceClusterSpec:
    """A disaggregated serving cluster: a router, a prefill pool and a decode pool."""

    model: ModelSpec = crd_field("The served model.")
    prefill: PoolSpec = crd_field("The prefill pool.", default_factory=PoolSpec)
    decode: PoolSpec = crd_field("The decode pool.", default_factory=PoolSpec)
    router: RouterSpec = crd_field("The router.", default_factory=RouterSpec)
    objectives: Objectives | None = crd_field(
        "Latency objectives; unset: the planner holds each pool where it is.", default=None
    )
    topology: TopologySpec = crd_field("Topology labels and pairing.", default_factory=TopologySpec)
    kv_transfer: KVTransferSpec = crd_field("KV transfer.", default_factory=KVTransferSpec)
    engine: EngineSpec = crd_field("Engine settings.", default_factory=EngineSpec)
    image: str | None = crd_field(
        "Container image; unset: the operator's default (its own version).",
        default=None,
        min_length=1,
    )

    def pool(self, role: Role) -> PoolSpec:
        return self.prefill if role is Role.PREFILL else self.decode
