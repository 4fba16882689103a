"""Configuration of the router process (`kvferry router`)."""

from __future__ import annotations

from dataclasses import dataclass

from .placement.builtin import BUILTIN, DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class RouterConfig:
    model: str = "tiny"
    """The model this cluster serves (a preset name or a Hugging Face folder); workers
    must be started with the same --model, or their registration is refused."""
    tokenizer: str = ""
    """A folder with tokenizer.json, or `byte`; empty: the model folder when --model is a
    folder, else the presets' byte tokenizer."""
    host: str = "127.0.0.1"
    port: int = 50051
    """Client port (Generation, health, reflection; and Registry unless --registry-port)."""
    registry_port: int = -1
    """Serve the workers' Registry on its own insecure port (required with TLS, where the
    client port is TLS-only); -1: on the client port."""
    max_in_flight: int = 256
    """Requests the router holds at once; beyond it Generate answers RESOURCE_EXHAUSTED."""
    queue_timeout_s: float = 30.0
    """How long a request waits for a decode worker with free KV blocks before
    RESOURCE_EXHAUSTED."""
    request_timeout_s: float = 600.0
    """Deadline of a request whose client set none."""
    admit_timeout_s: float = 5.0
    """Deadline of one Admit call on a decode worker."""
    prefill_timeout_s: float = 300.0
    """Deadline of one Prefill call; a prefill worker stuck longer is given up on and the
    request placed again."""
    max_attempts: int = 3
    """Placements tried per request (a worker failing mid-request counts one)."""
    short_prompt_tokens: int = 64
    """Prompts up to this many tokens run whole on a decode worker (no prefill hop)."""
    worker_ttl_s: float = 6.0
    """A worker silent this long is dropped from the registry."""
    heartbeat_interval_s: float = 2.0
    """How often workers are told to heartbeat."""
    tls_cert: str = ""
    """PEM certificate chain for TLS on the client port (with --tls-key)."""
    tls_key: str = ""
    """PEM private key for --tls-cert."""
    auth_token_file: str = ""
    """File holding a bearer token that Generate/Abort/ListModels/GetClusterStatus require."""
    reflection: bool = True
    """Serve gRPC server reflection (grpcurl, Postman) on the client port."""
    metrics_port: int = -1
    """Serve Prometheus metrics over HTTP at /metrics on this port (0: any free port);
    -1: off."""
    latency_window_s: float = 60.0
    """Window of finished requests behind the TTFT/TPOT percentiles in GetClusterStatus
    (what `kvferry status` and the operator's planner read)."""
    placement: str = DEFAULT_POLICY
    """Built-in placement policy: random, round-robin, least-loaded, cache-aware, kvferry
    (docs/placement.md); --placement-config overrides its keys."""
    placement_config: str = ""
    """A YAML file declaring the placement pipeline (filters, scorers, picker, tier
    bandwidths); its `policy:` key names the built-in it starts from."""
    index_poll_interval_s: float = 0.5
    """How often the router reads every worker's prefix-cache events and KV transfers
    (its cluster KV index and measured bandwidths); 0: no index (cache-aware scorers then
    see no hits)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be set (a preset name such as 'tiny' or a folder)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not -1 <= self.registry_port < 65536:
            raise ValueError(f"registry_port must be -1 or in [0, 65535], got {self.registry_port}")
        for name in ("max_in_flight", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.short_prompt_tokens < 0:
            raise ValueError(f"short_prompt_tokens must be >= 0, got {self.short_prompt_tokens}")
        if self.placement not in BUILTIN:
            raise ValueError(
                f"placement must be one of {', '.join(BUILTIN)}, got {self.placement!r}"
            )
        if self.index_poll_interval_s < 0:
            raise ValueError(
                f"index_poll_interval_s must be >= 0 (0: off), got {self.index_poll_interval_s}"
            )
        if not -1 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port must be -1 or in [0, 65535], got {self.metrics_port}")
        for name in (
            "latency_window_s",
            "queue_timeout_s",
            "request_timeout_s",
            "admit_timeout_s",
            "prefill_timeout_s",
            "worker_ttl_s",
            "heartbeat_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_cert and self.registry_port == -1:
            raise ValueError(
                "with --tls-cert the client port is TLS-only: give workers a separate"
                " cluster-internal --registry-port"
            )
        if self.auth_token_file and self.registry_port == -1:
            raise ValueError(
                "with --auth-token-file, give workers a separate cluster-internal"
                " --registry-port (the Registry takes no token; on the client port it would"
                " let anyone register a worker)"
            )
        if self.worker_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"worker_ttl_s ({self.worker_ttl_s}) must exceed heartbeat_interval_s"
                f" ({self.heartbeat_interval_s}), or healthy workers expire"
            )
