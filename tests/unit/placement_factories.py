"""Tiny worlds for placement tests: worker records with load, labels and KV layout."""

from __future__ import annotations

from kvferry.services.router.workers import (
    Role,
    WorkerId,
    WorkerInfo,
    WorkerLoad,
    WorkerRecord,
    WorkerState,
)
from kvferry.topology import NODE, NVLINK_DOMAIN, RACK, ZONE

P, D, M = Role.PREFILL, Role.DECODE, Role.MIXED
BLOCK = 16
KV_BLOCK_BYTES = 16 * 1024 * 1024
"""16 MiB per 16-token block (1 MiB per token): transfers take visible time."""


def worker(
    wid: str,
    role: Role,
    *,
    running: int = 0,
    waiting: int = 0,
    prefill_tokens: int = 0,
    free: int = 100,
    total: int = 100,
    in_flight: int = 0,
    in_flight_tokens: int = 0,
    draining: bool = False,
    at: str = "",
    block_size: int = BLOCK,
    kv_bytes_per_block: int = KV_BLOCK_BYTES,
) -> WorkerRecord:
    """`at` = "zone/rack/domain/node" (a prefix is fine: "z1/r1" has no domain or node)."""
    labels = dict(zip((ZONE, RACK, NVLINK_DOMAIN, NODE), at.split("/"), strict=False)) if at else {}
    info = WorkerInfo(
        WorkerId(wid),
        role,
        f"10.0.0.{len(wid)}:{abs(hash(wid)) % 60000 + 1}",
        f"10.0.0.{len(wid)}:1",
        "tiny",
        labels,
        block_size=block_size,
        kv_bytes_per_block=kv_bytes_per_block,
    )
    load = WorkerLoad(waiting, running, prefill_tokens, free, total)
    state = WorkerState.DRAINING if draining else WorkerState.HEALTHY
    return WorkerRecord(info, load, 0.0, state, in_flight, in_flight_tokens)
