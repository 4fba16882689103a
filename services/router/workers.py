"""What the router knows about a worker: identity, role, and its last load report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

WorkerId = NewType("WorkerId", str)


class Role(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    MIXED = "mixed"
    """Runs whole requests: prefill and decode on one engine."""

    @property
    def can_prefill(self) -> bool:
        return self in (Role.PREFILL, Role.MIXED)

    @property
    def can_decode(self) -> bool:
        return self in (Role.DECODE, Role.MIXED)


class WorkerState(enum.Enum):
    HEALTHY = "healthy"
    DRAINING = "draining"
    """Finishing in-flight work; takes no new requests."""


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """A worker's load snapshot, as sent with each heartbeat."""

    num_waiting: int = 0
    num_running: int = 0
    prefill_tokens_waiting: int = 0
    free_kv_blocks: int = 0
    total_kv_blocks: int = 0

    def __post_init__(self) -> None:
        for name in (
            "num_waiting",
            "num_running",
            "prefill_tokens_waiting",
            "free_kv_blocks",
            "total_kv_blocks",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.free_kv_blocks > self.total_kv_blocks:
            raise ValueError(
                f"free_kv_blocks ({self.free_kv_blocks}) exceeds total ({self.total_kv_blocks})"
            )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Identity of a registered worker (fixed for its lifetime)."""

    worker_id: WorkerId
    role: Role
    address: str
    """host:port of its Worker gRPC service."""
    kv_endpoint: str
    """host:port of its KVTransfer service (decode side receives KV there)."""
    model: str
    labels: dict[str, str] = field(default_factory=dict)
    """Topology labels (node, NVLink domain, rack, zone)."""
    max_model_len: int = 0
    """Longest prompt + output it serves, in tokens (0: not reported)."""
    block_size: int = 0
    """Tokens per KV block (0: not reported)."""
    kv_bytes_per_block: int = 0
    """Bytes of one KV block across all layers, K and V (0: not reported)."""
    topology_source: str = ""
    """Where its labels came from: nvml, operator, flags, none."""
    topology_detail: str = ""
    """A note on its topology discovery (e.g. why NVML was not used)."""
    incarnation: int = 0
    """Per-process id: a new value means its prefix cache started again."""


@dataclass(slots=True)
class WorkerRecord:
    info: WorkerInfo
    load: WorkerLoad
    last_seen: float
    state: WorkerState = WorkerState.HEALTHY
    in_flight: int = 0
    """Requests the router placed here and has not seen finish (fresher than `load`)."""
    in_flight_prefill_tokens: int = 0
    """Prompt tokens this router sent (or is sending) here to prefill, minus the hits it
    expected, whose Prefill has not returned: a fresh view of the worker's queue between
    heartbeats (`load.prefill_tokens_waiting` lags by up to one)."""
