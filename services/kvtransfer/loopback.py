"""An in-process transport for tests: the same chunking, wire encoding, verification and
resend policy as gRPC, with no sockets. Endpoints name sinks registered with `bind`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb

from .compression import PackBackend
from .config import KVTransferConfig
from .errors import ReceiverUnavailableError, TransferTimeoutError
from .faults import FaultPlan
from .protocols import KVSink
from .push_result import PushResult
from .receiver import PushReceiver
from .sender import ChunkSender
from .stats import TransferLog
from .wire_chunk import WireChunk


class LoopbackTransport(ChunkSender):
    def __init__(
        self,
        sinks: Mapping[str, KVSink] | None = None,
        config: KVTransferConfig | None = None,
        *,
        faults: FaultPlan | None = None,
        clock: Callable[[], float] | None = None,
        pack_backend: PackBackend = PackBackend.TORCH,
    ) -> None:
        super().__init__(config, faults=faults, clock=clock, pack_backend=pack_backend)
        self._sinks = dict(sinks or {})
        self.received = TransferLog(self.config.stats_history)
        """Pushes as the receiving side recorded them."""

    def bind(self, endpoint: str, sink: KVSink) -> None:
        """Make `endpoint` deliver to `sink`."""
        self._sinks[endpoint] = sink

    async def close(self) -> None:
        """Nothing to release."""

    async def _send(
        self, endpoint: str, chunks: AsyncIterator[WireChunk], timeout_s: float
    ) -> PushResult:
        sink = self._sinks.get(endpoint)
        if sink is None:
            raise ReceiverUnavailableError(f"no loopback KV receiver bound at {endpoint}")
        receiver = PushReceiver(
            sink, peer="loopback", clock=self.clock, compression=self.config.compression
        )
        try:
            async with asyncio.timeout(timeout_s):
                async for chunk in chunks:
                    # Through the wire format and back, as over a socket.
                    if not receiver.feed(WireChunk.from_bytes(chunk.to_bytes())):
                        break
        except TimeoutError as e:
            raise TransferTimeoutError(
                f"loopback KV push to {endpoint} exceeded its deadline ({timeout_s:.3g} s)"
            ) from e
        response = receiver.finish().to_proto()
        self.received.record(receiver.stats())
        return PushResult.from_proto(pb.PushKVResponse.FromString(response.SerializeToString()))
