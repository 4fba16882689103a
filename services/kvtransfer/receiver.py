"""The receiving side of one push: verify each chunk, feed the sink, decide the answer.

Shared by the gRPC servicer and the loopback transport, so both verify identically.
`verify` (CRC32C and shape; the slab it makes views the message, no copy) may run on a
worker thread; the bookkeeping and every `KVSink` call stay on the caller's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.errors import TransferError

from .chunking import assemble
from .compression import KVCompression
from .errors import ChunkCorruptError, MalformedPushError
from .protocols import KVSink
from .push_result import PushResult, PushStatus
from .slab import KVSlab
from .stats import TransferDirection, TransferStats
from .wire_chunk import WireChunk

log = logging.getLogger(__name__)


def verify(
    chunk: WireChunk, compression: KVCompression = KVCompression.NONE
) -> KVSlab | TransferError | None:
    """Check a message's payload (and that it is compressed as `compression`); the slab,
    the reason it failed, or None for the end message. Pure and thread-safe: the CPU-heavy
    half of receiving (the CRC32C)."""
    if chunk.is_end:
        return None
    try:
        return assemble(chunk, compression)
    except TransferError as e:
        return e


class PushReceiver:
    """One push's state: framing, counts, the sink calls and the verdict. `take`,
    `finish` and the sink calls run on the caller's thread (the event loop for the
    servicer), one push message at a time."""

    def __init__(
        self,
        sink: KVSink,
        *,
        peer: str = "",
        clock: Callable[[], float] = time.perf_counter,
        compression: KVCompression = KVCompression.NONE,
    ) -> None:
        self.sink = sink
        self.peer = peer
        self.clock = clock
        self.compression = compression
        """The only compression accepted (the receiving worker's setting)."""
        self.request_id = ""
        self._started: float | None = None
        self._data_chunks = 0
        self._accepted_chunks = 0
        self._accepted_bytes = 0
        self._rejected: list[int] = []
        self._end: pb.KVPushEnd | None = None
        self._verdict: PushResult | None = None
        """Set when the push failed for good: read nothing more."""

    def feed(self, chunk: WireChunk) -> bool:
        """Verify and take one message on this thread (`take(chunk, verify(...))`)."""
        return self.take(chunk, verify(chunk, self.compression))

    def take(self, chunk: WireChunk, verified: KVSlab | TransferError | None) -> bool:
        """Take one message whose payload `verify` already checked (possibly on another
        thread); False when the push has failed and reading should stop.

        MalformedPushError: the stream breaks the protocol.
        """
        if self._started is None:
            self._started = self.clock()
        self._check_framing(chunk)
        if chunk.is_end:
            self._end = chunk.header.end
            return True
        self._data_chunks += 1
        if isinstance(verified, ChunkCorruptError):
            log.warning(
                "kv chunk corrupt: request_id=%s peer=%s %s", self.request_id, self.peer, verified
            )
            self._rejected.append(chunk.seq)
            return True
        if isinstance(verified, TransferError):
            return self._fail(PushStatus.REJECTED, str(verified))
        if verified is None:
            raise ValueError(f"data chunk {chunk.seq} was not verified")
        try:
            self.sink.accept(verified)
        except KeyError:
            return self._fail(PushStatus.UNKNOWN_REQUEST, self._unknown())
        except (TransferError, ValueError) as e:
            return self._fail(PushStatus.REJECTED, f"chunk {chunk.seq} refused: {e}")
        self._accepted_chunks += 1
        self._accepted_bytes += chunk.payload_len
        return True

    def finish(self) -> PushResult:
        """The answer, once the stream has ended (or `feed` returned False). Completes the
        request on the sink when the push asked for it and everything was accepted."""
        if self._verdict is None:
            self._verdict = self._decide()
        return self._verdict

    def stats(self) -> TransferStats:
        """This push as seen from the receiving side (call after `finish`)."""
        started = self._started if self._started is not None else self.clock()
        return TransferStats(
            request_id=self.request_id,
            direction=TransferDirection.RECEIVE,
            peer=self.peer,
            bytes=self._accepted_bytes,
            chunks=self._accepted_chunks,
            seconds=self.clock() - started,
            status=self.finish().status,
        )

    # -- internals -----------------------------------------------------------------------
    def _check_framing(self, chunk: WireChunk) -> None:
        if not chunk.request_id:
            raise MalformedPushError("KV chunk has an empty request_id")
        if not self.request_id:
            self.request_id = chunk.request_id
        elif chunk.request_id != self.request_id:
            raise MalformedPushError(
                f"KV push for {self.request_id!r} carries a chunk for {chunk.request_id!r}"
                " (one push carries one request)"
            )
        if self._end is not None:
            raise MalformedPushError(
                f"KV push for {self.request_id!r} continues after its end message"
            )

    def _decide(self) -> PushResult:
        if self._end is None:
            return self._result(PushStatus.INCOMPLETE, detail="stream ended without end")
        if self._end.total_chunks != self._data_chunks:
            return self._result(
                PushStatus.INCOMPLETE,
                detail=f"end says {self._end.total_chunks} chunks, {self._data_chunks} arrived",
            )
        if self._rejected:
            return self._result(
                PushStatus.CORRUPT,
                rejected_seqs=tuple(self._rejected),
                detail=f"{len(self._rejected)} chunks failed verification",
            )
        if not self._end.HasField("first_token_id"):
            return self._result(PushStatus.OK)
        try:
            self.sink.complete(self.request_id, self._end.first_token_id)
        except KeyError:
            return self._result(PushStatus.UNKNOWN_REQUEST, detail=self._unknown())
        except (TransferError, ValueError) as e:
            return self._result(PushStatus.REJECTED, detail=f"cannot complete: {e}")
        return self._result(PushStatus.OK, completed=True)

    def _fail(self, status: PushStatus, detail: str) -> bool:
        log.warning(
            "kv push failed: request_id=%s peer=%s status=%s %s",
            self.request_id,
            self.peer,
            status.name,
            detail,
        )
        self._verdict = self._result(status, detail=detail)
        return False

    def _result(
        self,
        status: PushStatus,
        *,
        rejected_seqs: tuple[int, ...] = (),
        completed: bool = False,
        detail: str = "",
    ) -> PushResult:
        return PushResult(
            status,
            accepted_chunks=self._accepted_chunks,
            accepted_bytes=self._accepted_bytes,
            rejected_seqs=rejected_seqs,
            completed=completed,
            detail=detail,
        )

    def _unknown(self) -> str:
        return f"not waiting for KV for request {self.request_id!r}"
