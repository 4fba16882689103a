"""The decode worker's landing point for pushed KV.

`accept` runs on the event loop and must not wait for the engine thread (a step takes
tens of milliseconds): it checks the slab against the admission cheaply, then queues the
write. Engine commands run in order, so by the time `complete_remote` runs every write
queued before it has landed; the engine checks completeness there.

A compressed slab (FP8) is expanded on the engine thread, after it crossed to the engine's
device in its compressed form; an uncompressed one is written as it came (bit-exact).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kvferry.errors import TransferError
from kvferry.services.engine.async_engine import AsyncEngine
from kvferry.services.engine.cache_layout import CacheLayout
from kvferry.services.engine.scheduler import RemoteAdmission
from kvferry.services.kvtransfer.compression import KVCodec
from kvferry.services.kvtransfer.slab import KVSlab


@dataclass(slots=True)
class Admitted:
    """A request with blocks reserved here, waiting for its KV and its Decode call."""

    admission: RemoteAdmission
    first_token: asyncio.Future[int]
    expiry: asyncio.TimerHandle | None = None
    needed: frozenset[int] = field(default_factory=frozenset)


class EngineKVSink:
    def __init__(
        self,
        engine: AsyncEngine,
        layout: CacheLayout,
        admitted: dict[str, Admitted],
        loop: asyncio.AbstractEventLoop,
        codec: KVCodec | None = None,
    ) -> None:
        self.engine = engine
        self.layout = layout
        self.admitted = admitted
        self.loop = loop
        self.codec = codec or KVCodec()

    def accept(self, slab: KVSlab) -> None:
        entry = self.admitted[slab.request_id]  # KeyError: not admitted here
        extra = sorted(set(slab.block_positions) - entry.needed)
        if extra:
            raise TransferError(f"block positions {extra} were not requested")
        if slab.layer_end > self.layout.num_layers:
            raise TransferError(
                f"layers up to {slab.layer_end} sent; the model has {self.layout.num_layers}"
            )
        tail = tuple(slab.data.shape[3:])
        expected = (self.layout.block_size, self.layout.num_kv_heads, self.layout.head_dim)
        if tail != expected:
            raise TransferError(f"block shape {tail} does not match this worker's {expected}")
        rid, positions, start = slab.request_id, list(slab.block_positions), slab.layer_start
        codec, dtype = self.codec, self.layout.dtype
        self.engine.submit(
            lambda e: e.write_remote_kv(rid, positions, start, codec.decode(slab, dtype, e.device))
        )

    def complete(self, request_id: str, first_token_id: int) -> None:
        entry = self.admitted[request_id]
        self.loop.call_soon_threadsafe(_resolve, entry.first_token, first_token_id)


def _resolve(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)
