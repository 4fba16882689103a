"""Configuration of one worker process (its engine is configured by `EngineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("prefill", "decode", "mixed")


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
    heartbeat_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")
        for name in ("kv_wait_timeout_s", "push_deadline_s", "heartbeat_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
