"""The push policy every transport shares: chunk, send, resend once, measure.

A push encodes slabs on a worker thread (one slab ahead of the network), streams the
chunks, then reads the receiver's answer. Chunks that failed verification are resent once
in a second call; anything else that is not OK raises. Transports implement `_send`.

NOTE: chunks are views of the slabs' tensors, kept until the receiver answers so that
corrupt ones can be resent: a push copies no KV on the sender beyond the one serialization
per message, but the caller must not modify a slab's tensor while its push runs.

With `config.compression` set, each slab is compressed first, on its own device (a GPU
slab crosses to the host already halved), by the codec `pack_backend` selects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable

from .chunking import end_chunk, split_slab
from .compression import KVCodec, PackBackend
from .config import KVTransferConfig
from .errors import (
    ChunkCorruptError,
    TransferRejectedError,
    TransferTimeoutError,
    UnknownRequestError,
)
from .faults import FaultPlan
from .push_result import PushResult, PushStatus
from .slab import KVSlab
from .stats import TransferDirection, TransferLog, TransferStats
from .wire_chunk import WireChunk

log = logging.getLogger(__name__)

_ENCODE_AHEAD = 2
"""Slabs encoded but not yet sent: keeps the network busy while the next slab encodes."""

_Encoded = list[WireChunk] | Exception | None
"""What the encoder hands the stream: a slab's chunks, its own failure, or None (done)."""


class ChunkSender(ABC):
    """Base of the KVSender implementations (see `protocols.KVSender` for the contract)."""

    def __init__(
        self,
        config: KVTransferConfig | None = None,
        *,
        faults: FaultPlan | None = None,
        clock: Callable[[], float] | None = None,
        pack_backend: PackBackend = PackBackend.TORCH,
    ) -> None:
        self.config = config or KVTransferConfig()
        self.codec = KVCodec(self.config.compression, pack_backend)
        self.faults = faults or FaultPlan()
        self.clock = clock or time.perf_counter
        self.transfers = TransferLog(self.config.stats_history)
        """Finished pushes from this sender (for GetStats)."""

    @abstractmethod
    async def _send(
        self, endpoint: str, chunks: AsyncIterator[WireChunk], timeout_s: float
    ) -> PushResult:
        """Stream `chunks` to `endpoint` in one call and return the receiver's answer;
        raise a TransferError subclass for transport failures (incl. the timeout)."""

    async def push(
        self,
        endpoint: str,
        request_id: str,
        slabs: AsyncIterator[KVSlab] | Iterable[KVSlab],
        *,
        first_token_id: int | None = None,
        deadline_s: float,
    ) -> TransferStats:
        if not request_id:
            raise ValueError("push needs a non-empty request_id")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        start = self.clock()
        deadline = start + deadline_s
        sent: dict[int, WireChunk] = {}
        queue: asyncio.Queue[_Encoded] = asyncio.Queue(maxsize=_ENCODE_AHEAD)
        failed: list[Exception] = []
        producer = asyncio.create_task(self._encode(slabs, request_id, queue, failed))
        waited = _Stopwatch(self.clock)
        try:
            first = self._first_pass(queue, sent, request_id, first_token_id, waited)
            try:
                result = await self._send(endpoint, first, deadline_s)
            finally:
                if failed:  # the encoder's own error (a bad slab), not the aborted call
                    raise failed[0]
            resent = 0
            if result.status is PushStatus.CORRUPT:
                resent = len(result.rejected_seqs)
                result = await self._resend(
                    endpoint, request_id, sent, result, first_token_id, deadline
                )
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
        seconds = self.clock() - start
        stats = TransferStats(
            request_id=request_id,
            direction=TransferDirection.SEND,
            peer=endpoint,
            bytes=sum(c.payload_len for c in sent.values()),
            chunks=len(sent),
            seconds=seconds,
            resent_chunks=resent,
            status=result.status,
            wire_seconds=max(seconds - waited.total, 0.0),
        )
        self.transfers.record(stats)
        _raise_for_status(result, endpoint, request_id)
        log.debug(
            "kv push sent: request_id=%s endpoint=%s bytes=%d chunks=%d resent=%d gbps=%.2f",
            request_id,
            endpoint,
            stats.bytes,
            stats.chunks,
            resent,
            stats.gbps,
        )
        return stats

    # -- the two passes --------------------------------------------------------------------
    async def _encode(
        self,
        slabs: AsyncIterator[KVSlab] | Iterable[KVSlab],
        request_id: str,
        queue: asyncio.Queue[_Encoded],
        failed: list[Exception],
    ) -> None:
        try:
            async for slab in _aiter(slabs):
                if slab.request_id != request_id:
                    raise ValueError(
                        f"slab for {slab.request_id!r} pushed as part of request {request_id!r}"
                    )
                chunks = await asyncio.to_thread(self._split, slab)
                await queue.put(chunks)
        except Exception as e:
            # NOTE: the stream must fail, never end cleanly: a clean end would tell the
            # receiver that KV it never got is complete.
            failed.append(e)
            await queue.put(e)
            return
        await queue.put(None)

    def _split(self, slab: KVSlab) -> list[WireChunk]:
        return split_slab(self.codec.encode(slab), self.config.max_chunk_bytes)

    async def _first_pass(
        self,
        queue: asyncio.Queue[_Encoded],
        sent: dict[int, WireChunk],
        request_id: str,
        first_token_id: int | None,
        waited: _Stopwatch,
    ) -> AsyncGenerator[WireChunk, None]:
        while True:
            # NOTE: time spent here is the link idle for want of KV (the prefill's next
            # layer, or its encoding): it is not the link's time (`wire_seconds`).
            with waited:
                item = await queue.get()
            if item is None:
                break
            if isinstance(item, Exception):
                raise TransferRejectedError(f"encoding KV of {request_id!r} failed") from item
            for chunk in item:
                chunk.header.seq = len(sent)
                sent[chunk.seq] = chunk
                yield self.faults.apply(chunk, resend=False)
        yield end_chunk(request_id, len(sent), first_token_id)

    async def _resend(
        self,
        endpoint: str,
        request_id: str,
        sent: dict[int, WireChunk],
        result: PushResult,
        first_token_id: int | None,
        deadline: float,
    ) -> PushResult:
        unknown = sorted(set(result.rejected_seqs) - sent.keys())
        if unknown:
            raise TransferRejectedError(
                f"receiver {endpoint} rejected chunks {unknown} of {request_id!r} never sent"
            )
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise TransferTimeoutError(
                f"no time left to resend {len(result.rejected_seqs)} corrupt chunks of"
                f" {request_id!r} to {endpoint}"
            )
        log.warning(
            "kv push resending corrupt chunks: request_id=%s endpoint=%s seqs=%s",
            request_id,
            endpoint,
            list(result.rejected_seqs),
        )
        again = [sent[s] for s in result.rejected_seqs]

        async def chunks() -> AsyncGenerator[WireChunk, None]:
            for chunk in again:
                yield self.faults.apply(chunk, resend=True)
            yield end_chunk(request_id, len(again), first_token_id)

        retried = await self._send(endpoint, chunks(), remaining)
        if retried.status is PushStatus.CORRUPT:
            raise ChunkCorruptError(
                f"chunks {list(retried.rejected_seqs)} of {request_id!r} still failed"
                f" verification at {endpoint} after a resend: {retried.detail}"
            )
        return retried


class _Stopwatch:
    """Sums the time spent inside `with stopwatch:` blocks."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = 0.0
        self._since = 0.0

    def __enter__(self) -> None:
        self._since = self.clock()

    def __exit__(self, *exc: object) -> None:
        self.total += self.clock() - self._since


async def _aiter(slabs: AsyncIterator[KVSlab] | Iterable[KVSlab]) -> AsyncIterator[KVSlab]:
    if isinstance(slabs, AsyncIterable):
        async for slab in slabs:
            yield slab
    else:
        for slab in slabs:
            yield slab


def _raise_for_status(result: PushResult, endpoint: str, request_id: str) -> None:
    if result.status is PushStatus.OK:
        return
    where = f"KV push of {request_id!r} to {endpoint}"
    if result.status is PushStatus.UNKNOWN_REQUEST:
        raise UnknownRequestError(f"{where}: {result.detail}")
    raise TransferRejectedError(f"{where}: {result.status.name}: {result.detail}")
