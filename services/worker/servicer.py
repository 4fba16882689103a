"""The Worker gRPC service: a thin adapter from proto messages to the AsyncEngine.

Decode side (a request's life): Admit reserves blocks and answers the positions still
needed -> KV arrives through the KVTransfer service into `EngineKVSink` -> Decode waits
for the first token (the push's end), joins the request to the batch and streams every
token from the first; if the KV is incomplete it recomputes the prompt here instead.
Unclaimed reservations expire after `kv_wait_timeout_s`.

Prefill side: Prefill runs the prompt with `max_tokens=1`, exporting each layer's KV of
the needed positions as the layer finishes; a push streams those slabs to the decode
worker while later layers compute, then a second, empty push carries the first token.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import torch

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.errors import CapacityError, TransferError
from kvferry.sampling_params import SamplingParams
from kvferry.services.engine.async_engine import AsyncEngine, EngineDeadError
from kvferry.services.engine.block_pool import KVEvent
from kvferry.services.engine.engine import LLMEngine
from kvferry.services.engine.model_runner import KVExport
from kvferry.services.kvtransfer.compression import KVCompression
from kvferry.services.kvtransfer.protocols import KVSender
from kvferry.services.kvtransfer.slab import KVSlab
from kvferry.services.kvtransfer.stats import TransferLog
from kvferry.wire import sampling_from_proto

from .config import WorkerConfig
from .convert import layout_to_proto, load_to_proto, logprob_to_proto, output_to_proto
from .kv_events import KVEventLog, event_to_proto
from .kv_sink import Admitted

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class _Pending:
    prompt: list[int]
    params: SamplingParams
    entry: Admitted
    skip_draws: int
    """Tokens already generated elsewhere (a re-admission): seeded streams skip them."""


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failure maps to (bad input, capacity, transfer, engine down)."""
    if isinstance(err, CapacityError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, TransferError):  # the worker is fine; this request's transfer is not
        return grpc.StatusCode.ABORTED, f"KV transfer failed: {err}"
    if isinstance(err, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, EngineDeadError):
        return grpc.StatusCode.UNAVAILABLE, f"engine stopped: {err}"
    return grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}"


async def _guarded(context: grpc.aio.ServicerContext, work: Coroutine[Any, Any, T]) -> T:
    try:
        return await work
    except (ValueError, CapacityError, TransferError, EngineDeadError) as err:
        code, detail = status_for(err)
        await context.abort(code, detail)
        raise  # unreachable: abort raises


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(
        self,
        engine: AsyncEngine,
        sender: KVSender,
        config: WorkerConfig,
        kv_endpoint: str,
        admitted: dict[str, Admitted],
    ) -> None:
        self.engine = engine
        self.sender = sender
        self.config = config
        self.kv_endpoint = kv_endpoint
        self.layout = engine.engine.cache_layout
        self.layout_proto = layout_to_proto(self.layout, KVCompression(config.kv_compression))
        self.admitted = admitted
        self._pending: dict[str, _Pending] = {}
        self.draining = False
        self.kv_events = KVEventLog()
        """Prefix-cache events for the router's index (drained from the engine)."""
        self._kv_events_lock = asyncio.Lock()
        """Orders drains so a snapshot matches the log's last seq (see collect_kv_events)."""
        self.transfer_logs: list[TransferLog] = []
        """Where this worker's sends and receives are recorded (reported by GetStats)."""
        self.incarnation = secrets.randbits(63) + 1
        """This process's id (registered, and in GetStats): a new value tells the router
        the prefix cache and its event sequence started again."""

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext) -> None:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")

    # -- decode side -----------------------------------------------------------------------
    async def Admit(
        self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdmitResponse:
        await self._refuse_if_draining(context)
        return await _guarded(context, self._admit(request))

    async def _admit(self, request: pb.AdmitRequest) -> pb.AdmitResponse:
        if not request.request_id:
            raise ValueError("request_id is empty")
        params = sampling_from_proto(request.sampling)
        prompt = list(request.prompt_token_ids) + list(request.output_token_ids)
        if request.output_token_ids:  # re-admission: max_tokens counts what was sent
            remaining = params.max_tokens - len(request.output_token_ids)
            if remaining < 1:
                raise ValueError("output_token_ids already reach max_tokens")
            params = replace(params, max_tokens=remaining)
        rid, skip = request.request_id, len(request.output_token_ids)
        try:
            admission = await self.engine.admit_remote(rid, prompt, params, skip_draws=skip)
        except asyncio.CancelledError:  # the caller's deadline: the engine may have admitted
            self.engine.submit(lambda e: e.abort(rid))  # runs after the admit (in order)
            raise
        if admission is None:
            raise CapacityError("no free KV blocks or sequence slots for this request now")
        loop = asyncio.get_running_loop()
        entry = Admitted(
            admission, loop.create_future(), None, frozenset(admission.needed_block_positions)
        )
        timeout = request.kv_wait_timeout_ms / 1000 or self.config.kv_wait_timeout_s
        entry.expiry = loop.call_later(timeout, self._expire, request.request_id)
        self.admitted[request.request_id] = entry
        self._pending[request.request_id] = _Pending(prompt, params, entry, skip)
        return pb.AdmitResponse(
            needed_block_positions=admission.needed_block_positions,
            num_cached_tokens=admission.num_cached_tokens,
            kv_endpoint=self.kv_endpoint,
            kv_layout=self.layout_proto,
        )

    def _forget(self, request_id: str) -> _Pending | None:
        pending = self._pending.pop(request_id, None)
        self.admitted.pop(request_id, None)
        if pending is not None and pending.entry.expiry is not None:
            pending.entry.expiry.cancel()
        return pending

    def _expire(self, request_id: str) -> None:
        if self._forget(request_id) is not None:
            log.warning("admitted request expired unclaimed: request_id=%s", request_id)
            self.engine.submit(lambda e: e.abort(request_id))

    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerateResponse]:
        rid = request.request_id
        pending = self._pending.get(rid)
        if pending is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"request {rid!r} is not admitted here")
            return
        try:
            stream = await self._decode_stream(rid, pending, request.compute_prompt, context)
            sent = 0
            async for out in stream:
                yield output_to_proto(out, sent)
                sent = len(out.logprobs or ())
        except (ValueError, CapacityError, TransferError, EngineDeadError) as err:
            code, detail = status_for(err)
            await context.abort(code, detail)
        except asyncio.CancelledError:  # the caller went away before the stream started
            if self._forget(rid) is not None:
                self.engine.submit(lambda e: e.abort(rid))
            raise

    async def _decode_stream(
        self,
        rid: str,
        pending: _Pending,
        compute_prompt: bool,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        if pending.entry.expiry is not None:  # this call owns the request now: its
            pending.entry.expiry.cancel()  # cancellation or deadline frees the blocks
        if not compute_prompt:
            wait = context.time_remaining() or self.config.kv_wait_timeout_s
            try:
                first = await asyncio.wait_for(asyncio.shield(pending.entry.first_token), wait)
            except TimeoutError:
                self._forget(rid)
                await self.engine.abort(rid)
                raise TransferError(f"KV for {rid!r} did not arrive within {wait:.1f}s") from None
            self._forget(rid)
            try:
                return await _started(self.engine.complete_remote(rid, first))
            except TransferError as err:  # incomplete KV: recompute the prompt here
                log.warning("recomputing prompt after bad KV: request_id=%s %s", rid, err)
        self._forget(rid)
        await self.engine.abort(rid)
        stream = self.engine.generate(
            rid, pending.prompt, pending.params, skip_draws=pending.skip_draws
        )
        return await _started(stream)

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        self._forget(request.request_id)
        released = await _guarded(context, self.engine.abort(request.request_id))
        return pb.ReleaseResponse(released=released)

    # -- prefill side ----------------------------------------------------------------------
    async def Prefill(
        self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefillResponse:
        await self._refuse_if_draining(context)
        dest = request.destination
        if dest.kv_layout != self.layout_proto:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"destination KV layout {dest.kv_layout} differs from this worker's"
                f" {self.layout_proto}",
            )
        return await _guarded(context, self._prefill(request))

    async def _prefill(self, request: pb.PrefillRequest) -> pb.PrefillResponse:
        rid, dest = request.request_id, request.destination
        if not rid or not dest.kv_endpoint:
            raise ValueError("request_id and destination.kv_endpoint are required")
        params = replace(sampling_from_proto(request.sampling), max_tokens=1)
        positions = list(dest.needed_block_positions)
        loop = asyncio.get_running_loop()
        slabs: asyncio.Queue[KVSlab | None] = asyncio.Queue()

        def sink(layer: int, kv: torch.Tensor) -> None:  # on the engine thread
            slab = KVSlab(rid, layer, layer + 1, positions, kv[None])
            loop.call_soon_threadsafe(slabs.put_nowait, slab)

        async def layer_slabs() -> AsyncIterator[KVSlab]:
            for _ in range(self.layout.num_layers):
                slab = await slabs.get()
                if slab is None:
                    return
                yield slab

        deadline = self.config.push_deadline_s
        push = asyncio.create_task(
            self.sender.push(dest.kv_endpoint, rid, layer_slabs(), deadline_s=deadline)
        )
        started = time.perf_counter()
        try:
            outs = [
                out
                async for out in self.engine.generate(
                    rid,
                    list(request.prompt_token_ids),
                    params,
                    kv_export=KVExport(positions, sink),
                    skip_draws=request.num_output_tokens,
                )
            ]
        except BaseException:
            slabs.put_nowait(None)
            push.cancel()
            raise
        prefill_s = time.perf_counter() - started
        data = await push
        first = outs[-1]
        end = await self.sender.push(
            dest.kv_endpoint, rid, [], first_token_id=first.token_ids[0], deadline_s=deadline
        )
        response = pb.PrefillResponse(
            first_token_id=first.token_ids[0],
            num_prompt_tokens=len(first.prompt_token_ids),
            num_computed_tokens=len(first.prompt_token_ids) - first.num_cached_tokens,
            num_cached_tokens=first.num_cached_tokens,
            kv_bytes_sent=data.bytes,
            kv_chunks_sent=data.chunks + end.chunks,
            kv_transfer_s=data.seconds + end.seconds,
            prefill_s=prefill_s,
        )
        if first.logprobs:
            response.first_logprob.CopyFrom(logprob_to_proto(first.logprobs[0]))
        return response

    # -- both ------------------------------------------------------------------------------
    async def GetStats(
        self, request: pb.WorkerStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerStats:
        stats = await _guarded(context, self.engine.stats())
        snapshot = await _guarded(
            context, self.collect_kv_events(snapshot=request.include_snapshot)
        )
        since = self.kv_events.since(request.since_event_seq)
        transfers = [t.to_proto() for log in self.transfer_logs for t in log.snapshot()]
        return pb.WorkerStats(
            worker_id=self.config.worker_id,
            load=load_to_proto(stats),
            events=[event_to_proto(seq, event) for seq, event in since.events],
            last_event_seq=since.last_seq,
            events_truncated=since.truncated,
            recent_transfers=transfers,
            cached_block_hashes=snapshot or (),
            has_snapshot=snapshot is not None,
            incarnation=self.incarnation,
        )

    async def collect_kv_events(self, *, snapshot: bool = False) -> list[int] | None:
        """Move the engine's pending prefix-cache events into the numbered log; with
        `snapshot`, also return every hash the prefix cache holds as of the log's last seq.

        NOTE: events and snapshot are read in one engine-thread call (nothing changes the
        pool in between), and the lock keeps another drain from numbering events between
        that call and this one's `extend`, so the snapshot is exactly the state at
        `kv_events.last_seq`."""

        def take(e: LLMEngine) -> tuple[list[KVEvent], list[int] | None]:
            return e.take_kv_events(), (list(e.kv.pool.cached_hashes()) if snapshot else None)

        async with self._kv_events_lock:
            taken: tuple[list[KVEvent], list[int] | None] = await self.engine.call(take)
            events, hashes = taken
            self.kv_events.extend(events)
        return hashes

    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainResponse:
        self.draining = True
        return pb.DrainResponse(in_flight_requests=self.engine.num_active + len(self._pending))


async def _started(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pull the first item now (so admission errors surface here), then the rest."""
    first = await stream.__anext__()

    async def rest() -> AsyncIterator[T]:
        yield first
        async for item in stream:
            yield item

    return rest()
