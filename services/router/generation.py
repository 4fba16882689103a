"""The client-facing Generation service: validate, place, Admit -> Prefill -> Decode, stream.

One request's life (DESIGN.md's lifecycle), as `_serve` runs it:

1. Validate (model, prompt, sampling, context length); tokenize text.
2. Place: the policy picks a decode worker (and a prefill worker for long prompts). A
   decode worker with no room (RESOURCE_EXHAUSTED) is skipped and the request waits with
   backoff, up to `queue_timeout_s`, for one that has room.
3. Admit on the decode worker; with a prefill worker, Prefill pushes the KV there and
   returns the first token, which goes to the client at once (TTFT). Decode then streams
   from the first token; `OutputCursor` drops what the client already has.
4. Failures: prefill fails -> the decode worker computes the prompt itself; decode fails
   mid-stream -> re-admit elsewhere with prompt + tokens already sent (never sent twice).
   At most `max_attempts` worker failures, all within the request's deadline.
5. Whatever ends the request (finish, client cancel, Abort, failure), every worker that
   still holds it gets a Release.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry.sampling_params import SamplingParams
from kvferry.services.engine.block_hash import hash_block_tokens
from kvferry.tokenizer import Tokenizer
from kvferry.wire import sampling_from_proto

from .config import RouterConfig
from .kv_index import KVIndex
from .latency import LatencySummary
from .metrics import RouterMetrics
from .output_cursor import OutputCursor, StreamMismatchError
from .placement import (
    BandwidthTable,
    ClusterView,
    NoEligibleWorkersError,
    PlacementPolicy,
    PlacementRequest,
    RouterView,
)
from .registry import Registry
from .registry_servicer import ROLE_TO_PROTO
from .worker_clients import WorkerClients
from .workers import WorkerId, WorkerRecord, WorkerState

log = logging.getLogger(__name__)

SERVICE_NAME = "kvferry.v1.Generation"
_RELEASE_TIMEOUT_S = 2.0
_CLIENT_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
_CLIENT_ERROR_NAMES = {code.name for code in _CLIENT_ERRORS}


class RouterError(Exception):
    """Ends a request with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """A request body that did not parse (e.g. invalid UTF-8 in a string field)."""

    error: str


def parse_generate_request(data: bytes) -> gen_pb.GenerateRequest | MalformedRequest:
    """The Generate deserializer: a parse failure becomes INVALID_ARGUMENT in the handler
    instead of gRPC's generic INTERNAL."""
    try:
        request: gen_pb.GenerateRequest = gen_pb.GenerateRequest.FromString(data)
    except DecodeError as err:
        return MalformedRequest(str(err) or "cannot parse GenerateRequest")
    return request


@dataclass(slots=True)
class _Job:
    request_id: str
    key: str
    """The router's own id; worker-side ids are `<key>-<attempt>`."""
    prompt: list[int]
    params: SamplingParams
    sampling: gen_pb.SamplingOptions
    started: float
    deadline: float
    cursor: OutputCursor = field(default_factory=OutputCursor)
    failures: list[str] = field(default_factory=list)
    failed: set[WorkerId] = field(default_factory=set)
    attempt: int = 0
    calls: list[grpc.aio.Call] = field(default_factory=list)
    """Worker calls in flight (Abort cancels them)."""
    aborted: bool = False
    first_token_at: float | None = None
    queue_s: float = 0.0
    kv_transfer_s: float = 0.0
    cached_tokens: int | None = None
    prefill_tokens: int = 0
    """Prompt tokens the current attempt gives its prefill worker (0: no prefill hop)."""

    def remaining(self, now: float) -> float:
        left = self.deadline - now
        if left <= 0:
            raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, self._why("deadline exceeded"))
        return left

    def _why(self, what: str) -> str:
        sent = len(self.cursor.sent)
        tail = f"; worker failures: {'; '.join(self.failures)}" if self.failures else ""
        return f"request {self.request_id!r}: {what} after {sent} tokens{tail}"


@dataclass(slots=True)
class _Leg:
    """A worker holding the request under `rid` (released unless the request finished)."""

    worker: WorkerRecord
    rid: str
    prefill_tokens: int = 0
    """Prompt tokens counted on the worker to prefill (`Registry.placed`)."""


class GenerationServicer:
    def __init__(
        self,
        config: RouterConfig,
        registry: Registry,
        policy: PlacementPolicy,
        clients: WorkerClients,
        tokenizer: Tokenizer,
        *,
        clock: Callable[[], float] = time.monotonic,
        view: ClusterView | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.policy = policy
        self.view = view or RouterView(registry, KVIndex(), BandwidthTable())
        """What placement sees: the registry, the cluster KV index, measured bandwidths."""
        self.clients = clients
        self.tokenizer = tokenizer
        self.clock = clock
        self._running: dict[str, _Job] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.metrics = RouterMetrics(
            registry, lambda: len(self._running), window_s=config.latency_window_s, clock=clock
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        def unary(fn: Callable[..., object], req: type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=req.FromString,  # type: ignore[attr-defined]
                response_serializer=lambda m: m.SerializeToString(),
            )

        handlers = {
            "Generate": grpc.unary_stream_rpc_method_handler(
                self.Generate,
                request_deserializer=parse_generate_request,
                response_serializer=gen_pb.GenerateResponse.SerializeToString,
            ),
            "Abort": unary(self.Abort, gen_pb.AbortRequest),
            "ListModels": unary(self.ListModels, gen_pb.ListModelsRequest),
            "GetClusterStatus": unary(self.GetClusterStatus, gen_pb.ClusterStatusRequest),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )

    @property
    def num_running(self) -> int:
        return len(self._running)

    # -- Generate --------------------------------------------------------------------------
    async def Generate(
        self,
        request: gen_pb.GenerateRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gen_pb.GenerateResponse]:
        try:
            job = self._job(request, context)
        except RouterError as err:  # refused before it started
            self.metrics.ended(
                self.clock(), err.code.name.lower(), error=err.code.name not in _CLIENT_ERROR_NAMES
            )
            await context.abort(err.code, err.detail)
            return
        self._running[job.request_id] = job
        outcome = "cancelled"  # unless it finishes or fails below
        try:
            async for message in self._serve(job):
                if message.finish_reason:
                    outcome = self._observe_end(job, message.finish_reason)
                yield message
        except RouterError as err:
            outcome = err.code.name
            log.info("request failed: %s %s", err.code.name, err.detail)
            await context.abort(err.code, err.detail)
        finally:
            self._running.pop(job.request_id, None)
            if outcome not in ("finished", "aborted"):
                self.metrics.ended(
                    self.clock(),
                    outcome.lower(),
                    error=outcome != "cancelled" and outcome not in _CLIENT_ERROR_NAMES,
                    num_tokens=len(job.cursor.sent),
                )

    def _observe_end(self, job: _Job, reason: int) -> str:
        """Record a request that ended with a finish reason; returns its outcome."""
        now, sent = self.clock(), len(job.cursor.sent)
        if reason == gen_pb.FINISH_REASON_ABORT:
            self.metrics.ended(now, "aborted", error=False, num_tokens=sent)
            return "aborted"
        first = job.first_token_at
        ttft = None if first is None else first - job.started
        tpot = None if first is None or sent < 2 else (now - first) / (sent - 1)
        self.metrics.finished(now, ttft, tpot, sent)
        return "finished"

    def _job(
        self,
        request: gen_pb.GenerateRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> _Job:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if isinstance(request, MalformedRequest):
            raise RouterError(bad, f"malformed GenerateRequest: {request.error}")
        if request.model and request.model != self.config.model:
            raise RouterError(
                bad,
                f"unknown model {request.model!r}; this cluster serves {self.config.model!r}"
                " (see ListModels)",
            )
        if request.request_id in self._running:
            raise RouterError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request id {request.request_id!r} is already running; ids must be unique"
                " among a client's running requests (or leave it empty)",
            )
        if len(self._running) >= self.config.max_in_flight:
            raise RouterError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the router holds {len(self._running)} requests (max_in_flight="
                f"{self.config.max_in_flight}); retry later",
            )
        which = request.WhichOneof("prompt")
        if which == "text":
            prompt = self.tokenizer.encode(request.text) if request.text else []
        elif which == "token_ids":
            prompt = list(request.token_ids.ids)
        else:
            prompt = []
        if not prompt:
            raise RouterError(bad, "the prompt is empty: set `text` or `token_ids`")
        try:
            params = sampling_from_proto(request.sampling)
        except ValueError as err:
            raise RouterError(bad, f"bad sampling options: {err}") from None
        limit = self._max_model_len()
        if limit and len(prompt) + params.max_tokens > limit:
            raise RouterError(
                bad,
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the"
                f" model's context of {limit} tokens; shorten the prompt or lower max_tokens",
            )
        now = self.clock()
        budget = context.time_remaining()
        timeout = self.config.request_timeout_s
        if budget is not None:
            timeout = min(timeout, budget)
        key = uuid.uuid4().hex[:16]
        return _Job(
            request.request_id or key,
            key,
            prompt,
            params,
            request.sampling,
            now,
            now + timeout,
        )

    def _max_model_len(self) -> int:
        lens = [r.info.max_model_len for r in self.registry.records() if r.info.max_model_len]
        return min(lens, default=0)

    async def _serve(self, job: _Job) -> AsyncIterator[gen_pb.GenerateResponse]:
        try:
            while True:
                ended = self._ended(job)  # a worker died right after the last token
                if ended is not None:
                    yield self._final(job, ended, None)
                    return
                async for message in self._attempt(job):
                    yield message
                    if message.finish_reason:
                        return
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not job.aborted or (current is not None and current.cancelling()):
                raise  # the client went away (or the server is stopping)
            yield self._final(job, gen_pb.FINISH_REASON_ABORT, None)

    async def _attempt(self, job: _Job) -> AsyncIterator[gen_pb.GenerateResponse]:
        """One placement: admit, prefill (if placed), decode. A worker failure is recorded
        and the attempt ends without a finish; the caller then tries again."""
        prefill, decode, admit = await self._admit(job)
        legs = [decode]
        unstarted = prefill  # counted on it since placement; `_prefill` takes the count over
        finished = False
        try:
            start = len(job.cursor.sent)  # the output index Decode's stream begins at
            compute_prompt = prefill is None
            self._check_abort(job)
            # Decode opens now: it waits for the KV on the worker, and a router that dies
            # cancels it there, freeing the admitted blocks.
            call = self.clients.stub(decode.worker.info.address).Decode(
                pb.DecodeRequest(request_id=decode.rid, compute_prompt=compute_prompt),
                timeout=job.remaining(self.clock()),
            )
            job.calls.append(call)
            if prefill is not None:
                unstarted = None
                first = await self._prefill(job, prefill, admit, legs)
                if first is None:
                    call.cancel()
                    return
                yield first
            async for message in self._relay(job, call, start):
                finished = bool(message.finish_reason)
                yield message
            if not finished:
                self._fail(job, decode.worker, "the decode stream ended without finishing")
        except grpc.aio.AioRpcError as err:
            self._worker_failed(job, decode.worker, err)
        except StreamMismatchError as err:
            self._fail(job, decode.worker, str(err))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if job.aborted or (current is not None and current.cancelling()):
                raise
            # A worker call was cancelled under us (its channel closed): a worker failure.
            self._fail(job, decode.worker, "the worker call was cancelled")
        finally:
            if not finished:  # a Decode still waiting on the worker must not linger there
                for open_call in job.calls:
                    open_call.cancel()
            job.calls.clear()
            if unstarted is not None:
                self.registry.placed(unstarted.info.worker_id, -1, -job.prefill_tokens)
            for leg in legs:
                self.registry.placed(leg.worker.info.worker_id, -1, -leg.prefill_tokens)
                if not finished:
                    self._release(leg)

    async def _admit(self, job: _Job) -> tuple[WorkerRecord | None, _Leg, pb.AdmitResponse]:
        """Place and admit, waiting (with backoff) while every decode worker is full."""
        busy: set[WorkerId] = set()
        backoff = 0.02
        queue_deadline = min(job.deadline, self.clock() + self.config.queue_timeout_s)
        block_size, hashes = self._block_hashes(job.prompt)
        while True:
            self._check_abort(job)
            try:
                placement = self.policy.place(
                    PlacementRequest(
                        len(job.prompt), hashes, frozenset(job.failed | busy), block_size
                    ),
                    self.view,
                )
            except NoEligibleWorkersError as err:
                if not busy:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, job._why(str(err))) from None
                if self.clock() + backoff > queue_deadline:
                    raise RouterError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        job._why(
                            "every decode worker stayed full (no free KV blocks or slots);"
                            " retry later or add decode workers"
                        ),
                    ) from None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                busy.clear()
                continue
            decode = self._record(placement.decode)
            prefill = None if placement.prefill is None else self._record(placement.prefill)
            job.attempt += 1
            leg = _Leg(decode, f"{job.key}-{job.attempt}")
            request = pb.AdmitRequest(
                request_id=leg.rid,
                prompt_token_ids=job.prompt,
                output_token_ids=job.cursor.sent,
                sampling=job.sampling,
                kv_wait_timeout_ms=int(self.config.admit_timeout_s * 2000),
            )
            timeout = min(self.config.admit_timeout_s, job.remaining(self.clock()))
            call = self.clients.stub(decode.info.address).Admit(request, timeout=timeout)
            job.calls.append(call)
            # NOTE: counted from the decision, not from the Admit's answer: placements made
            # while this Admit is on the wire see it, so a burst does not herd onto the one
            # pair that looked idlest. Undone below unless the decode worker admits it.
            # The prefill worker's queue grows by the prompt less the hits placement expected.
            prompt_tokens = len(job.prompt) + len(job.cursor.sent)
            hit_tokens = placement.prefill_hit_blocks * block_size
            job.prefill_tokens = 0 if prefill is None else max(1, prompt_tokens - hit_tokens)
            counted = [(decode.info.worker_id, 0)]
            if prefill is not None:
                counted.append((prefill.info.worker_id, job.prefill_tokens))
            for wid, tokens in counted:
                self.registry.placed(wid, +1, tokens)
            admitted = False
            try:
                admit = await call
                admitted = True
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    busy.add(decode.info.worker_id)
                else:
                    self._release(leg)  # a timed-out Admit may have reserved blocks there
                    self._worker_failed(job, decode, err)
                continue
            except asyncio.CancelledError:
                self._release(leg)  # it may have admitted before the cancel reached it
                current = asyncio.current_task()
                if job.aborted or (current is not None and current.cancelling()):
                    raise
                self._fail(job, decode, "the Admit call was cancelled")  # its channel closed
                continue
            finally:
                job.calls.clear()
                if not admitted:
                    for wid, tokens in counted:
                        self.registry.placed(wid, -1, -tokens)
            job.queue_s = self.clock() - job.started
            return prefill, leg, admit

    async def _prefill(
        self, job: _Job, worker: WorkerRecord, admit: pb.AdmitResponse, legs: list[_Leg]
    ) -> gen_pb.GenerateResponse | None:
        """Run the prompt on the prefill worker; the first-token message, or None when the
        prefill worker failed (the next attempt excludes it)."""
        leg = _Leg(worker, legs[0].rid, job.prefill_tokens)
        legs.append(leg)  # counted on the worker since placement (`_admit`)
        request = pb.PrefillRequest(
            request_id=leg.rid,
            prompt_token_ids=[*job.prompt, *job.cursor.sent],
            num_output_tokens=len(job.cursor.sent),
            sampling=job.sampling,
            destination=pb.KVDestination(
                kv_endpoint=admit.kv_endpoint,
                needed_block_positions=admit.needed_block_positions,
                kv_layout=admit.kv_layout,
            ),
        )
        timeout = min(self.config.prefill_timeout_s, job.remaining(self.clock()))
        call = self.clients.stub(worker.info.address).Prefill(request, timeout=timeout)
        job.calls.append(call)
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            self._worker_failed(job, worker, err)  # next attempt places elsewhere
            return None
        legs.remove(leg)  # done there: the prefill worker finished the request itself
        self.registry.placed(worker.info.worker_id, -1, -leg.prefill_tokens)
        job.kv_transfer_s = reply.kv_transfer_s
        job.cached_tokens = reply.num_cached_tokens
        start = len(job.cursor.sent)
        job.cursor.advance(start, [reply.first_token_id])
        message = gen_pb.GenerateResponse(
            request_id=job.request_id, token_ids=[reply.first_token_id]
        )
        if reply.HasField("first_logprob"):
            message.logprobs.append(reply.first_logprob)
        self._stamp_first(job, message)
        return message

    async def _relay(
        self, job: _Job, call: grpc.aio.UnaryStreamCall, start: int
    ) -> AsyncIterator[gen_pb.GenerateResponse]:
        """Forward a Decode stream that begins at output index `start`, minus the tokens
        the client already has (the first token, or all of them after a re-admission)."""
        position = start
        async for reply in call:
            skip = job.cursor.advance(position, reply.token_ids)
            position += len(reply.token_ids)
            message = gen_pb.GenerateResponse(
                request_id=job.request_id,
                token_ids=reply.token_ids[skip:],
                text=reply.text,
                logprobs=reply.logprobs[skip:],
            )
            if message.token_ids and job.first_token_at is None:
                self._stamp_first(job, message)
            if reply.finish_reason:
                if job.cached_tokens is None:
                    job.cached_tokens = reply.usage.cached_tokens
                yield self._final(job, reply.finish_reason, message)
                return
            if message.token_ids or message.text or message.logprobs:
                yield message

    # -- helpers ---------------------------------------------------------------------------
    def _ended(self, job: _Job) -> int | None:
        """The finish reason of a request whose last sent token already ended it."""
        if len(job.cursor.sent) >= job.params.max_tokens:
            return gen_pb.FINISH_REASON_LENGTH
        if job.cursor.sent and not job.params.ignore_eos:
            stops = {*job.params.stop_token_ids, *self.tokenizer.eos_token_ids}
            if job.cursor.sent[-1] in stops:
                return gen_pb.FINISH_REASON_STOP
        return None

    def _stamp_first(self, job: _Job, message: gen_pb.GenerateResponse) -> None:
        job.first_token_at = self.clock()
        message.timing.ttft_s = job.first_token_at - job.started
        message.timing.queue_s = job.queue_s
        message.timing.kv_transfer_s = job.kv_transfer_s

    def _final(
        self,
        job: _Job,
        reason: int,
        message: gen_pb.GenerateResponse | None,
    ) -> gen_pb.GenerateResponse:
        final = message or gen_pb.GenerateResponse(request_id=job.request_id)
        final.finish_reason = reason  # type: ignore[assignment]
        final.usage.prompt_tokens = len(job.prompt)
        final.usage.completion_tokens = len(job.cursor.sent)
        final.usage.cached_tokens = job.cached_tokens or 0
        final.timing.e2e_s = self.clock() - job.started
        return final

    def _block_hashes(self, prompt: list[int]) -> tuple[int, tuple[int, ...]]:
        """The prompt's chained block hashes at the workers' block size (the function the
        engine uses), for prefix-cache scoring; none while no worker reported one."""
        records = self.registry.records_view()
        block_size = next((r.info.block_size for r in records if r.info.block_size), 0)
        if not block_size:
            return 0, ()
        return block_size, tuple(hash_block_tokens(prompt, block_size))

    def _record(self, worker_id: WorkerId) -> WorkerRecord:
        record = self.registry.get(worker_id)
        if record is None:  # placement only returns registered workers
            raise RouterError(grpc.StatusCode.INTERNAL, f"worker {worker_id!r} vanished")
        return record

    def _check_abort(self, job: _Job) -> None:
        if job.aborted:
            raise asyncio.CancelledError

    def _fail(self, job: _Job, worker: WorkerRecord, why: str) -> None:
        job.failed.add(worker.info.worker_id)
        job.failures.append(f"{worker.info.worker_id}: {why}")
        log.warning("worker failed a request: %s %s: %s", worker.info.worker_id, job.key, why)
        if len(job.failures) >= self.config.max_attempts:
            raise RouterError(grpc.StatusCode.UNAVAILABLE, job._why("giving up"))

    def _worker_failed(self, job: _Job, worker: WorkerRecord, err: grpc.aio.AioRpcError) -> None:
        code, detail = err.code(), err.details() or ""
        if code in _CLIENT_ERRORS:
            raise RouterError(code, detail)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            job.remaining(self.clock())  # the request's own deadline: DEADLINE_EXCEEDED
        if code == grpc.StatusCode.UNAVAILABLE:
            if "draining" in detail:  # a normal state, not a failure: just go elsewhere
                self.registry.set_draining(worker.info.worker_id)
                job.failed.add(worker.info.worker_id)
                return
            # Unreachable: stop placing there until it heartbeats (and re-registers). The
            # channel stays: other requests' calls on it must fail on their own terms.
            self.registry.remove(worker.info.worker_id)
        self._fail(job, worker, f"{code.name}: {detail}")

    def _release(self, leg: _Leg) -> None:
        stub = self.clients.stub(leg.worker.info.address)

        async def release() -> None:
            try:
                await stub.Release(
                    pb.ReleaseRequest(request_id=leg.rid), timeout=_RELEASE_TIMEOUT_S
                )
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as err:
                log.debug("release of %s on %s failed: %s", leg.rid, leg.worker.info.address, err)

        self._background_task(release())

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- Abort, ListModels, GetClusterStatus ---------------------------------------------
    async def Abort(
        self, request: gen_pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> gen_pb.AbortResponse:
        job = self._running.get(request.request_id)
        if job is None or job.aborted:
            return gen_pb.AbortResponse(aborted=False)
        job.aborted = True
        for call in job.calls:
            call.cancel()
        return gen_pb.AbortResponse(aborted=True)

    async def ListModels(
        self, request: gen_pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gen_pb.ListModelsResponse:
        healthy = [
            r for r in self.registry.records() if r.state is WorkerState.HEALTHY
        ]  # every registered worker serves config.model (others are refused)
        return gen_pb.ListModelsResponse(
            models=[
                gen_pb.ModelInfo(
                    name=self.config.model,
                    max_model_len=self._max_model_len(),
                    prefill_workers=sum(r.info.role.can_prefill for r in healthy),
                    decode_workers=sum(r.info.role.can_decode for r in healthy),
                )
            ]
        )

    async def GetClusterStatus(
        self, request: gen_pb.ClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> gen_pb.ClusterStatus:
        now = self.clock()
        return gen_pb.ClusterStatus(
            workers=[_worker_status(r, now) for r in self.registry.records()],
            latency=_latency_proto(self.metrics.summary(now)),
        )

    async def close(self) -> None:
        for job in list(self._running.values()):
            job.aborted = True
            for call in job.calls:
                call.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=_RELEASE_TIMEOUT_S)


def _latency_proto(summary: LatencySummary) -> gen_pb.LatencySummary:
    out = gen_pb.LatencySummary(
        window_s=summary.window_s,
        num_requests=summary.num_requests,
        num_errors=summary.num_errors,
    )
    if summary.ttft_s is not None:
        out.ttft_p50_ms = summary.ttft_s.p50 * 1e3
        out.ttft_p90_ms = summary.ttft_s.p90 * 1e3
        out.ttft_p99_ms = summary.ttft_s.p99 * 1e3
    if summary.tpot_s is not None:
        out.tpot_p50_ms = summary.tpot_s.p50 * 1e3
        out.tpot_p90_ms = summary.tpot_s.p90 * 1e3
        out.tpot_p99_ms = summary.tpot_s.p99 * 1e3
    return out


def _worker_status(record: WorkerRecord, now: float) -> gen_pb.WorkerStatus:
    load = record.load
    return gen_pb.WorkerStatus(
        worker_id=record.info.worker_id,
        role=ROLE_TO_PROTO[record.info.role],
        address=record.info.address,
        kv_endpoint=record.info.kv_endpoint,
        model=record.info.model,
        load=gen_pb.WorkerLoad(
            num_waiting=load.num_waiting,
            num_running=load.num_running,
            prefill_tokens_waiting=load.prefill_tokens_waiting,
            free_kv_blocks=load.free_kv_blocks,
            total_kv_blocks=load.total_kv_blocks,
        ),
        state=(
            gen_pb.WORKER_STATE_HEALTHY
            if record.state is WorkerState.HEALTHY
            else gen_pb.WORKER_STATE_DRAINING
        ),
        labels=record.info.labels,
        last_heartbeat_age_s=max(0.0, now - record.last_seen),
        in_flight=record.in_flight,
        topology_source=record.info.topology_source,
        topology_detail=record.info.topology_detail,
    )
