"""Push KV over gRPC: one client-streaming PushKV call per pass, one channel per endpoint.

grpc.aio channels belong to the event loop that created them: use one GrpcKVSender per
loop, and `close()` it before the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.errors import TransferError

from .compression import PackBackend
from .config import KVTransferConfig
from .errors import ReceiverUnavailableError, TransferRejectedError, TransferTimeoutError
from .faults import FaultPlan
from .push_result import PushResult
from .sender import ChunkSender
from .wire_chunk import PUSH_KV_METHOD, WireChunk

_DEADLINE_BACKSTOP_S = 1.0
"""gRPC's deadline trails the local one by this much, so the local cancel decides."""


class GrpcKVSender(ChunkSender):
    def __init__(
        self,
        config: KVTransferConfig | None = None,
        *,
        faults: FaultPlan | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        clock: Callable[[], float] | None = None,
        pack_backend: PackBackend = PackBackend.TORCH,
    ) -> None:
        super().__init__(config, faults=faults, clock=clock, pack_backend=pack_backend)
        self._options = [*self.config.grpc_options(), *channel_options]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.StreamUnaryMultiCallable] = {}

    def _push_kv(self, endpoint: str) -> grpc.aio.StreamUnaryMultiCallable:
        """PushKV on `endpoint`'s cached channel, sending `WireChunk`s (no protobuf copy)."""
        call = self._calls.get(endpoint)
        if call is None:
            channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels[endpoint] = channel
            call = self._calls[endpoint] = channel.stream_unary(
                PUSH_KV_METHOD,
                request_serializer=WireChunk.to_bytes,
                response_deserializer=pb.PushKVResponse.FromString,
            )
        return call

    async def _send(
        self, endpoint: str, chunks: AsyncIterator[WireChunk], timeout_s: float
    ) -> PushResult:
        # NOTE: the deadline is enforced here (a local cancel is clean); gRPC's own deadline
        # is a backstop that also tells the receiver when to give up.
        call = self._push_kv(endpoint)(timeout=timeout_s + _DEADLINE_BACKSTOP_S)
        writer = asyncio.create_task(_write_all(call, chunks))
        try:
            async with asyncio.timeout(timeout_s):
                response: pb.PushKVResponse = await call
        except TimeoutError as e:
            raise TransferTimeoutError(
                f"KV push to {endpoint} exceeded its deadline ({timeout_s:.3g} s)"
            ) from e
        except grpc.aio.AioRpcError as e:
            raise _transfer_error(e, endpoint, timeout_s) from e
        except asyncio.CancelledError:
            # The writer cancels the call when the chunk source fails: surface that.
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                raise TransferError(f"KV push to {endpoint} aborted") from writer.exception()
            raise
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        try:
            return PushResult.from_proto(response)
        except ValueError as e:
            raise TransferError(f"KV receiver {endpoint} answered nonsense: {e}") from e

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._calls.clear()
        for channel in channels:
            await channel.close()


async def _write_all(call: grpc.aio.StreamUnaryCall, chunks: AsyncIterator[WireChunk]) -> None:
    """Write every chunk, then half-close. Stops quietly once the call has ended (its
    status says why); cancels the call when `chunks` itself fails."""
    try:
        async for chunk in chunks:
            await call.write(chunk)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return
    except Exception:
        call.cancel()  # a no-op if the call already ended
        raise


def _transfer_error(e: grpc.aio.AioRpcError, endpoint: str, timeout_s: float) -> TransferError:
    code = e.code()
    detail = f"KV push to {endpoint} failed: {code.name}: {e.details()}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransferTimeoutError(
            f"KV push to {endpoint} exceeded its deadline ({timeout_s:.3g} s)"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ReceiverUnavailableError(detail)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return TransferRejectedError(detail)
    return TransferError(detail)
