"""Configuration of one worker process (its engine is configured by `EngineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .topology import validate_labels

ROLES = ("prefill", "decode", "mixed")
KV_COMPRESSIONS = ("none", "fp8")
"""Values of `kvtransfer.KVCompression` (kept torch-free here: the CLI parses flags)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    role: str = "mixed"
    """prefill: computes prompts and pushes KV; decode: receives KV and generates;
    mixed: runs whole requests (and can do either)."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port (reported on start)."""
    worker_id: str = ""
    """Stable id; default `<role>-<host>-<port>`."""
    router: str = ""
    """host:port of the router's Registry service; empty runs unregistered (tests)."""
    max_pending: int = 256
    """Requests held at once; beyond it calls fail fast with RESOURCE_EXHAUSTED rather than
    queueing without bound."""
    kv_wait_timeout_s: float = 30.0
    """How long admitted blocks wait for their KV and a Decode call before release."""
    push_deadline_s: float = 30.0
    """Deadline of a KV push to a decode worker."""
    kv_compression: str = "none"
    """KV on the wire: `none` (exact) or `fp8` (e4m3, a scale per block and head: half the
    bytes of a bf16 cache, lossy; see docs/benchmarks.md). Prefill and decode workers must
    agree: a decode worker rejects KV compressed any other way."""
    kv_max_chunk_bytes: int = 4 << 20
    """Largest KV payload per PushKV message (one block of one layer must fit)."""
    heartbeat_interval_s: float = 2.0
    labels: dict[str, str] = field(default_factory=dict)
    """Topology labels given explicitly (`--label rack=r1`): canonical keys only (node,
    nvlink_domain, rack, zone); they override NVML and the operator's."""
    podinfo_dir: str = ""
    """Downward-API folder whose `annotations` file carries the operator's
    `kvferry.io/topology` labels (re-read every heartbeat); empty: not under the operator."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.kv_max_chunk_bytes < 1:
            raise ValueError(f"kv_max_chunk_bytes must be positive, got {self.kv_max_chunk_bytes}")
        if self.kv_compression not in KV_COMPRESSIONS:
            raise ValueError(
                f"kv_compression must be one of {', '.join(KV_COMPRESSIONS)};"
                f" got {self.kv_compression!r}"
            )
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")
        for name in ("kv_wait_timeout_s", "push_deadline_s", "heartbeat_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        validate_labels(self.labels)
