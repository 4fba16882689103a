"""What a simulation runs: the cluster's shape (workers laid out in nodes, NVLink domains,
racks and zones), the workers' batching limits, the router's report cadence, and the
latency objectives. One frozen dataclass; `kvferry sim` flags are generated from it."""

from __future__ import annotations

from dataclasses import dataclass

from kvferry.services.router.config import RouterConfig
from kvferry.services.router.workers import Role
from kvferry.topology import NODE, NVLINK_DOMAIN, RACK, ZONE

LAYOUTS = ("interleaved", "split")
BANDWIDTH_FEEDS = ("push", "wire", "none")
_ROUTER = RouterConfig()


@dataclass(frozen=True, slots=True)
class SimConfig:
    prefill: int = 10
    """Prefill workers (one GPU each)."""
    decode: int = 6
    """Decode workers (one GPU each). About 5:3 suits the Mooncake conversation trace's
    long prompts, whose decode side is bound by KV memory (docs/simulator.md)."""
    gpus_per_node: int = 8
    """GPUs per host (an HGX H100 board: 8)."""
    nodes_per_nvlink_domain: int = 1
    """Hosts sharing one NVLink domain: 1 for HGX H100 (NVLink stops at the board); more
    for an NVLink Switch System or NVL72-style rack."""
    nodes_per_rack: int = 4
    """Hosts per rack (4 DGX H100 at ~10 kW each fill a 40 kW rack)."""
    racks_per_zone: int = 4
    """Racks per zone (availability zone / data hall)."""
    layout: str = "interleaved"
    """interleaved: every node holds prefill and decode GPUs in the cluster's ratio (the
    operator's topology-aware placement); split: prefill nodes first, then decode nodes."""
    prefill_batch_tokens: int = 16384
    """A prefill pass takes whole queued prompts up to this many uncached tokens (always
    at least one prompt)."""
    decode_chunk_tokens: int = 2048
    """Prompt tokens a decode worker computes per step for a request it runs whole
    (chunked prefill beside the running batch)."""
    max_num_seqs: int = 256
    """Sequences a decode worker admits at once (the engine's default)."""
    heartbeat_s: float = _ROUTER.heartbeat_interval_s
    """How often workers report load to the router (the router's default cadence)."""
    index_poll_s: float = _ROUTER.index_poll_interval_s
    """How often the router reads each worker's prefix-cache events and transfer records
    (its KV index lags the caches by up to this; the router's default)."""
    bandwidth_feed: str = "wire"
    """What the router's bandwidth table learns from each finished KV push: wire = bytes
    over the time on the link alone (what workers report as `wire_seconds` and the router
    learns); push = bytes over the push's whole duration from the Prefill call's start
    (queueing and compute included: what kvferry's router learned before it measured the
    wire); none = nothing (tier defaults only)."""
    ttft_slo_ms: float = 3000.0
    """Time to first token objective: the unloaded prefill time of a ~52k-token prompt
    on one H100, so ~97% of Mooncake conversation prompts can meet it without any
    prefix-cache hit."""
    tpot_slo_ms: float = 50.0
    """Time per output token objective (after the first): 20 tokens/s, faster than
    reading."""
    seed: int = 0
    """Seeds the policies' random choices (same seed, same run)."""

    def __post_init__(self) -> None:
        for name in ("prefill", "decode"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1 worker, got {getattr(self, name)}")
        for name in (
            "gpus_per_node",
            "nodes_per_nvlink_domain",
            "nodes_per_rack",
            "racks_per_zone",
            "prefill_batch_tokens",
            "decode_chunk_tokens",
            "max_num_seqs",
        ):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be at least 1, got {getattr(self, name)}")
        for name in ("heartbeat_s", "index_poll_s", "ttft_slo_ms", "tpot_slo_ms"):
            if not getattr(self, name) > 0:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be > 0, got {getattr(self, name)}")
        if self.bandwidth_feed not in BANDWIDTH_FEEDS:
            raise ValueError(
                f"--bandwidth-feed must be one of {', '.join(BANDWIDTH_FEEDS)},"
                f" got {self.bandwidth_feed!r}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """One simulated worker: its id, role and topology labels."""

    worker_id: str
    role: Role
    labels: dict[str, str]


def lay_out(config: SimConfig) -> list[WorkerSlot]:
    """Place the workers on GPUs, in GPU order: node g // gpus_per_node, NVLink domain,
    rack and zone by whole nodes. Interleaved puts decode GPUs evenly among prefill ones
    (GPU g is decode when floor((g+1)M/(N+M)) > floor(gM/(N+M))), so each node holds the
    cluster's ratio where sizes allow."""
    n, m = config.prefill, config.decode
    total = n + m
    slots = []
    counts = {Role.PREFILL: 0, Role.DECODE: 0}
    for g in range(total):
        if config.layout == "split":
            role = Role.PREFILL if g < n else Role.DECODE
        else:
            role = Role.DECODE if (g + 1) * m // total > g * m // total else Role.PREFILL
        node = g // config.gpus_per_node
        rack = node // config.nodes_per_rack
        labels = {
            NODE: f"node-{node}",
            NVLINK_DOMAIN: f"nvl-{node // config.nodes_per_nvlink_domain}",
            RACK: f"rack-{rack}",
            ZONE: f"zone-{rack // config.racks_per_zone}",
        }
        slots.append(WorkerSlot(f"{role.value}-{counts[role]:03d}", role, labels))
        counts[role] += 1
    return slots
