"""The client SDK against a scripted Generation server over real gRPC on 127.0.0.1:
round trips, client-side validation, cancellation, retries, errors, deadlines, TLS, tokens.

The fake server runs on its own event loop in a background thread, so the blocking
`Client` and the `AsyncClient` (on the test's loop) talk to it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvferry import AsyncClient, Client, Completion, GenerationChunk
from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry.client_types import (
    CALL_KEYS,
    SAMPLING_KEYS,
    CallAttempts,
    GenerateOptions,
    ModelInfo,
    RetryPolicy,
    Timing,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from kvferry.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    RequestError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams
from kvferry.security import BearerTokenInterceptor, server_credentials
from kvferry.wire import sampling_from_proto
from tests.tls_certs import write_self_signed

T = TypeVar("T")
TOKEN = "t0ken-for-tests"
GENERATION = "kvferry.v1.Generation"
WAIT_S = 5.0  # bound on anything a test waits for
FAST: dict[str, Any] = {"timeout": WAIT_S, "retry_backoff_s": 0.01}

# A scripted stream: two tokens with logprobs and the server's first-token timings, then
# one more token, then an empty last message with finish reason, usage and e2e timing.
STREAM = [
    gen_pb.GenerateResponse(
        request_id="r1",
        token_ids=[11, 12],
        text="Hel",
        logprobs=[
            gen_pb.TokenLogprob(
                token_id=11, logprob=-0.5, top=[gen_pb.TopLogprob(token_id=11, logprob=-0.5)]
            ),
            gen_pb.TokenLogprob(token_id=12, logprob=-1.25),
        ],
        timing=gen_pb.Timing(ttft_s=0.25, queue_s=0.125, kv_transfer_s=0.0625),
    ),
    gen_pb.GenerateResponse(
        request_id="r1", token_ids=[13], text="lo", logprobs=[gen_pb.TokenLogprob(token_id=13)]
    ),
    gen_pb.GenerateResponse(
        request_id="r1",
        finish_reason=gen_pb.FINISH_REASON_LENGTH,
        usage=gen_pb.Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=2),
        timing=gen_pb.Timing(e2e_s=0.5),
    ),
]
CHUNKS = [
    GenerationChunk(
        "r1",
        (11, 12),
        "Hel",
        (TokenLogprob(11, -0.5, (TopLogprob(11, -0.5),)), TokenLogprob(12, -1.25)),
        timing=Timing(ttft_s=0.25, queue_s=0.125, kv_transfer_s=0.0625),
    ),
    GenerationChunk("r1", (13,), "lo", (TokenLogprob(13, 0.0),)),
    GenerationChunk(
        "r1",
        (),
        "",
        finish_reason=FinishReason.LENGTH,
        usage=Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=2),
        timing=Timing(e2e_s=0.5),
    ),
]


@dataclass
class Step:
    """What the fake server does on one Generate call: send `messages`, then abort with
    `error`, or hang until cancelled, or end the stream."""

    messages: list[gen_pb.GenerateResponse] = field(default_factory=lambda: list(STREAM))
    error: tuple[grpc.StatusCode, str] | None = None
    hang: bool = False


class FakeGeneration(gen_grpc.GenerationServicer):
    """Plays `steps[i]` on the i-th Generate call (the last step repeats), fails unary
    calls with `unary_failures` in turn, and records what it received."""

    def __init__(
        self, *steps: Step, unary_failures: tuple[tuple[grpc.StatusCode, str], ...] = ()
    ) -> None:
        self.steps = list(steps) or [Step()]
        self.unary_failures = list(unary_failures)
        self.unary_calls = 0
        self.requests: list[gen_pb.GenerateRequest] = []
        self.metadata: list[dict[str, Any]] = []
        self.cancelled = threading.Event()
        self.aborted: list[str] = []

    async def Generate(self, request: gen_pb.GenerateRequest, context: Any) -> None:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        try:
            for message in step.messages:
                await context.write(message)
            if step.error is not None:
                await context.abort(*step.error)
            if step.hang:
                await asyncio.sleep(60)
        except asyncio.CancelledError:  # how grpc.aio tells a handler its call was cancelled
            self.cancelled.set()
            raise

    async def Abort(self, request: gen_pb.AbortRequest, context: Any) -> gen_pb.AbortResponse:
        await self._maybe_fail(context)
        self.aborted.append(request.request_id)
        return gen_pb.AbortResponse(aborted=request.request_id == "running")

    async def ListModels(self, request: Any, context: Any) -> gen_pb.ListModelsResponse:
        await self._maybe_fail(context)
        return gen_pb.ListModelsResponse(
            models=[gen_pb.ModelInfo(name="tiny", max_model_len=256, prefill_workers=1)]
        )

    async def GetClusterStatus(self, request: Any, context: Any) -> gen_pb.ClusterStatus:
        await self._maybe_fail(context)
        worker = gen_pb.WorkerStatus(worker_id="w0", role=gen_pb.WORKER_ROLE_DECODE)
        return gen_pb.ClusterStatus(workers=[worker])

    async def _maybe_fail(self, context: Any) -> None:
        self.unary_calls += 1
        if self.unary_failures:
            await context.abort(*self.unary_failures.pop(0))


@dataclass
class Server:
    target: str
    servicer: FakeGeneration


@contextlib.contextmanager
def serve(
    servicer: FakeGeneration,
    *,
    credentials: grpc.ServerCredentials | None = None,
    token: str | None = None,
) -> Iterator[Server]:
    """`servicer` (plus the health service) on 127.0.0.1, on a loop in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        interceptors = [] if token is None else [BearerTokenInterceptor(token, [GENERATION])]
        server = grpc.aio.server(interceptors=interceptors)
        gen_grpc.add_GenerationServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(WAIT_S)
    try:
        yield Server(f"127.0.0.1:{port}", servicer)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=2 * WAIT_S))


async def acollect(client: AsyncClient, prompt: Any, **options: Any) -> list[GenerationChunk]:
    return [chunk async for chunk in client.generate(prompt, **options)]


# --- round trips ---------------------------------------------------------------------------


def test_sync_stream_round_trips_chunks_and_request() -> None:
    with serve(FakeGeneration()) as server, Client(server.target, model="tiny", **FAST) as c:
        assert list(c.generate("Hello")) == CHUNKS
    (request,) = server.servicer.requests
    assert request.WhichOneof("prompt") == "text"
    assert request.text == "Hello"
    assert request.model == "tiny"
    assert request.request_id == ""
    assert sampling_from_proto(request.sampling) == SamplingParams()


def test_token_ids_prompt_and_every_sampling_field_reach_the_server() -> None:
    options: GenerateOptions = {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.75,
        "top_k": 3,
        "min_p": 0.125,
        "seed": 42,
        "stop": ["\n\n", "END"],
        "stop_token_ids": [2, 9],
        "ignore_eos": True,
        "logprobs": 2,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "model": "other",
        "request_id": "mine",
    }
    with serve(FakeGeneration()) as server, Client(server.target, model="tiny", **FAST) as c:
        c.complete([1, 2, 3], **options)
    (request,) = server.servicer.requests
    assert request.WhichOneof("prompt") == "token_ids"
    assert list(request.token_ids.ids) == [1, 2, 3]
    assert (request.model, request.request_id) == ("other", "mine")
    expected: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k in SAMPLING_KEYS
    }
    assert sampling_from_proto(request.sampling) == SamplingParams(**expected)


def test_sync_complete_folds_the_stream_and_times_it() -> None:
    with serve(FakeGeneration()) as server, Client(server.target, **FAST) as c:
        started = time.perf_counter()
        result = c.complete([5, 6], max_tokens=3)
        elapsed = time.perf_counter() - started
    assert isinstance(result, Completion)
    assert (result.request_id, result.text, result.token_ids) == ("r1", "Hello", (11, 12, 13))
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage == Usage(5, 3, 2)
    assert result.logprobs == CHUNKS[0].logprobs + CHUNKS[1].logprobs
    assert result.server_timing == Timing(0.25, 0.125, 0.0625, 0.5)
    assert result.ttft_s is not None
    assert 0 < result.ttft_s <= result.e2e_s <= elapsed


def test_async_stream_and_complete_round_trip() -> None:
    async def body(target: str) -> tuple[list[GenerationChunk], Completion]:
        async with AsyncClient(target, model="tiny", **FAST) as c:
            return await acollect(c, [7, 8], seed=3), await c.complete("Hi", temperature=0.0)

    with serve(FakeGeneration()) as server:
        chunks, result = run(body(server.target))
    assert chunks == CHUNKS
    assert (result.text, result.token_ids, result.finish_reason) == (
        "Hello",
        (11, 12, 13),
        FinishReason.LENGTH,
    )
    first, second = server.servicer.requests
    assert list(first.token_ids.ids) == [7, 8]
    assert first.sampling.seed == 3
    assert second.text == "Hi"
    assert second.sampling.temperature == 0.0


def test_unary_calls_round_trip() -> None:
    expected_models = [ModelInfo("tiny", 256, 1, 0)]
    with serve(FakeGeneration()) as server:
        with Client(server.target, **FAST) as c:
            assert c.list_models() == expected_models
            assert c.cluster_status().workers[0].worker_id == "w0"
            assert c.abort("running") is True
            assert c.abort("gone") is False
            with pytest.raises(ValueError, match="request_id must be a non-empty str"):
                c.abort("")

        async def body() -> None:
            async with AsyncClient(server.target, **FAST) as c:
                assert await c.list_models() == expected_models
                status = await c.cluster_status()
                assert status.workers[0].role == gen_pb.WORKER_ROLE_DECODE
                assert await c.abort("running") is True

        run(body())
    assert server.servicer.aborted == ["running", "gone", "running"]


def test_stream_without_finish_reason_is_an_error() -> None:
    step = Step(messages=STREAM[:2])
    with (
        serve(FakeGeneration(step)) as server,
        Client(server.target, **FAST) as c,
        pytest.raises(RequestError, match="ended without a finish_reason") as info,
    ):
        c.complete("x")
    assert info.value.code == grpc.StatusCode.INTERNAL


# --- client-side validation ------------------------------------------------------------------

BAD_CALLS: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
    ("x", {"temperature": -1.0}, ValueError, "temperature must be >= 0"),
    ("x", {"top_p": 0.0}, ValueError, "top_p must be in"),
    ("x", {"max_tokens": 0}, ValueError, "max_tokens must be at least 1"),
    ("x", {"logprobs": 99}, ValueError, "logprobs must be in"),
    ("x", {"stop": [""]}, ValueError, "stop strings must be non-empty"),
    ("x", {"timeout": -1}, ValueError, "timeout must be positive"),
    ("x", {"max_token": 5}, TypeError, "unexpected keyword argument.*max_token"),
    ("x", {"model": 3}, TypeError, "model must be a str"),
    ({"text": "x"}, {}, TypeError, "prompt must be a str.*or a list of token ids"),
    (b"x", {}, TypeError, "prompt must be a str"),
    (["a"], {}, TypeError, "prompt token ids must be ints"),
    ([1, -1], {}, ValueError, r"prompt token ids must be in \[0, 2\*\*32\)"),
    ([2**32], {}, ValueError, "prompt token ids must be in"),
]


@pytest.mark.parametrize(("prompt", "options", "error", "message"), BAD_CALLS)
def test_bad_calls_fail_client_side_before_any_rpc(
    prompt: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with serve(FakeGeneration()) as server:
        with Client(server.target, **FAST) as c:
            with pytest.raises(error, match=message):
                c.generate(prompt, **options)  # raises at once, before iteration
            with pytest.raises(error, match=message):
                c.complete(prompt, **options)

        async def body() -> None:
            async with AsyncClient(server.target, **FAST) as c:
                with pytest.raises(error, match=message):
                    c.generate(prompt, **options)
                with pytest.raises(error, match=message):
                    await c.complete(prompt, **options)

        run(body())
    assert server.servicer.requests == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"timeout": 0}, ValueError, "timeout must be positive"),
        ({"timeout": float("inf")}, ValueError, "timeout must be positive and finite"),
        ({"timeout": "5"}, ValueError, "timeout must be a number"),
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
        ({"max_retries": 1.5}, ValueError, "max_retries must be an integer"),
        ({"retry_backoff_s": -0.1}, ValueError, "backoff_s must be >= 0"),
        ({"token": "a", "token_file": "b"}, ValueError, "token or token_file, not both"),
        ({"token": "two words"}, ConfigError, "token must be printable ASCII"),
        ({"token_file": "/nonexistent/token"}, ConfigError, "/nonexistent/token does not exist"),
        ({"root_certificates": b"nope"}, ValueError, "hold no PEM certificate"),
        ({"root_certificates": "/nonexistent/ca.pem"}, ConfigError, "ca.pem does not exist"),
        ({"root_certificates": 5}, ValueError, "PEM file path or PEM bytes"),
        ({"tls": "yes"}, ValueError, "tls must be a bool"),
        ({"model": None}, ValueError, "model must be a str"),
    ],
)
def test_bad_client_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Client("127.0.0.1:1", **options)


@pytest.mark.parametrize("target", ["", "host :1", None])
def test_bad_target(target: Any) -> None:
    with pytest.raises(ValueError, match="target must be 'host:port'"):
        Client(target)


def test_async_client_outside_an_event_loop_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside the event loop that uses it"):
        AsyncClient("127.0.0.1:1")


def test_generate_options_cover_sampling_params_and_call_options() -> None:
    assert set(GenerateOptions.__annotations__) == SAMPLING_KEYS | CALL_KEYS


# --- cancellation ----------------------------------------------------------------------------


def keep_calls(client: Client | AsyncClient) -> list[Any]:
    """Keep every Generate call object alive, as a traceback holding the generator's frame
    would: then only an explicit cancel, not garbage collection, cancels the RPC."""
    calls: list[Any] = []
    generate = client._stub.Generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(generate(*args, **kwargs))
        return calls[-1]

    client._stub.Generate = spy
    return calls


def test_closing_the_sync_iterator_cancels_the_rpc() -> None:
    servicer = FakeGeneration(Step(messages=STREAM[:1], hang=True))
    with serve(servicer) as server, Client(server.target, **FAST) as c:
        calls = keep_calls(c)
        stream = c.generate("x")
        assert next(stream) == CHUNKS[0]
        assert not servicer.cancelled.is_set()
        stream.close()
        assert servicer.cancelled.wait(WAIT_S)
        assert len(calls) == 1


def test_breaking_out_of_a_for_loop_cancels_the_rpc() -> None:
    servicer = FakeGeneration(Step(messages=STREAM[:1], hang=True))
    with serve(servicer) as server, Client(server.target, **FAST) as c:
        calls = keep_calls(c)
        for chunk in c.generate("x"):
            assert chunk == CHUNKS[0]
            break
        assert servicer.cancelled.wait(WAIT_S)
        assert len(calls) == 1


def test_aclose_cancels_the_async_rpc() -> None:
    servicer = FakeGeneration(Step(messages=STREAM[:1], hang=True))

    async def body(target: str) -> None:
        async with AsyncClient(target, **FAST) as c:
            calls = keep_calls(c)
            stream = c.generate("x")
            assert await anext(stream) == CHUNKS[0]
            await asyncio.sleep(0.05)
            assert not servicer.cancelled.is_set()
            await stream.aclose()
            assert await asyncio.to_thread(servicer.cancelled.wait, WAIT_S)
            assert len(calls) == 1

    with serve(servicer) as server:
        run(body(server.target))


def test_cancelling_the_async_task_cancels_the_rpc() -> None:
    servicer = FakeGeneration(Step(messages=STREAM[:1], hang=True))

    async def body(target: str) -> None:
        async with AsyncClient(target, **FAST) as c:
            task = asyncio.create_task(acollect(c, "x"))
            while not servicer.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(servicer.cancelled.wait, WAIT_S)

    with serve(servicer) as server:
        run(body(server.target))


# --- retries ---------------------------------------------------------------------------------

NO_WORKER = (grpc.StatusCode.UNAVAILABLE, "no decode worker")
UNAVAILABLE = Step(messages=[], error=NO_WORKER)


def test_unavailable_before_the_first_chunk_is_retried() -> None:
    servicer = FakeGeneration(UNAVAILABLE, UNAVAILABLE, Step())
    with serve(servicer) as server, Client(server.target, max_retries=2, **FAST) as c:
        assert list(c.generate("x", request_id="same")) == CHUNKS
    assert [r.request_id for r in servicer.requests] == ["same"] * 3


def test_async_unavailable_before_the_first_chunk_is_retried() -> None:
    servicer = FakeGeneration(UNAVAILABLE, Step())

    async def body(target: str) -> list[GenerationChunk]:
        async with AsyncClient(target, max_retries=1, **FAST) as c:
            return await acollect(c, "x")

    with serve(servicer) as server:
        assert run(body(server.target)) == CHUNKS
    assert len(servicer.requests) == 2


def test_retries_are_bounded() -> None:
    servicer = FakeGeneration(UNAVAILABLE, unary_failures=(NO_WORKER,) * 10)
    with serve(servicer) as server, Client(server.target, max_retries=2, **FAST) as c:
        with pytest.raises(UnavailableError, match="no decode worker") as info:
            c.complete("x")
        assert len(servicer.requests) == 3
        assert info.value.__notes__ == ["gave up after 3 attempts"]
        with pytest.raises(UnavailableError):
            c.list_models()
        assert servicer.unary_calls == 3


def test_unary_unavailable_is_retried() -> None:
    servicer = FakeGeneration(unary_failures=(NO_WORKER,) * 2)
    with serve(servicer) as server:
        with Client(server.target, max_retries=2, **FAST) as c:
            assert c.list_models() == [ModelInfo("tiny", 256, 1, 0)]
        assert servicer.unary_calls == 3

        async def body() -> bool:
            async with AsyncClient(server.target, max_retries=1, **FAST) as c:
                return await c.abort("running")

        servicer.unary_failures = [NO_WORKER]
        assert run(body()) is True
        assert servicer.unary_calls == 5


def test_no_retry_once_a_chunk_was_received() -> None:
    cut = Step(messages=STREAM[:1], error=(grpc.StatusCode.UNAVAILABLE, "decode worker died"))
    servicer = FakeGeneration(cut, Step())
    with serve(servicer) as server, Client(server.target, max_retries=3, **FAST) as c:
        stream = c.generate("x")
        assert next(stream) == CHUNKS[0]
        with pytest.raises(UnavailableError, match="decode worker died"):
            next(stream)
    assert len(servicer.requests) == 1


def test_async_no_retry_once_a_chunk_was_received() -> None:
    cut = Step(messages=STREAM[:1], error=(grpc.StatusCode.UNAVAILABLE, "decode worker died"))
    servicer = FakeGeneration(cut, Step())
    received: list[GenerationChunk] = []

    async def body(target: str) -> None:
        async with AsyncClient(target, max_retries=3, **FAST) as c:
            with pytest.raises(UnavailableError, match="decode worker died"):
                async for chunk in c.generate("x"):
                    received.append(chunk)

    with serve(servicer) as server:
        run(body(server.target))
    assert received == CHUNKS[:1]
    assert len(servicer.requests) == 1


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN]
)
def test_other_codes_are_not_retried(code: grpc.StatusCode) -> None:
    servicer = FakeGeneration(Step(messages=[], error=(code, "nope")), Step())
    with (
        serve(servicer) as server,
        Client(server.target, max_retries=3, **FAST) as c,
        pytest.raises(RequestError) as info,
    ):
        c.complete("x")
    assert info.value.code == code
    assert len(servicer.requests) == 1


def test_retries_stop_at_the_deadline() -> None:
    servicer = FakeGeneration(UNAVAILABLE)
    # The first wait would be 2-4 s; the call's deadline is 1.5 s: no retry, no overrun.
    with serve(servicer) as server, Client(server.target, retry_backoff_s=4.0) as c:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            c.complete("x", timeout=1.5)
        assert time.monotonic() - started < 1.5
    assert len(servicer.requests) == 1


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=10, backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(0)
    for retry, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "details"


def test_retry_decisions_on_a_fake_clock() -> None:
    now = [100.0]
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    def attempts(max_retries: int, timeout: float | None) -> CallAttempts:
        policy = RetryPolicy(max_retries=max_retries, backoff_s=1.0)
        return CallAttempts(policy, timeout, rng=random.Random(0), clock=lambda: now[0])

    call = attempts(max_retries=5, timeout=10.0)
    assert call.start() == 10.0
    assert call.retry_delay(FakeRpcError(grpc.StatusCode.INTERNAL), received=False) is None
    assert call.retry_delay(unavailable, received=True) is None
    first = call.retry_delay(unavailable, received=False)
    assert first is not None and 0.5 <= first <= 1.0
    now[0] += 6.0
    assert call.start() == 4.0  # one deadline for every attempt
    second = call.retry_delay(unavailable, received=False)
    assert second is not None and 1.0 <= second <= 2.0
    now[0] += 3.5
    assert call.start() == 0.5
    assert call.retry_delay(unavailable, received=False) is None  # a 2-4 s wait would overrun
    now[0] += 1.0
    assert call.start() == 0.0

    spent = attempts(max_retries=1, timeout=None)
    assert spent.start() is None
    assert spent.retry_delay(unavailable, received=False) is not None
    spent.start()
    assert spent.retry_delay(unavailable, received=False) is None  # max_retries spent


# --- errors and deadlines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, UnauthenticatedError),
        (grpc.StatusCode.FAILED_PRECONDITION, RequestError),
    ],
)
def test_status_codes_map_to_typed_errors(code: grpc.StatusCode, error: type[Exception]) -> None:
    details = f"server says {code.name.lower()}"
    servicer = FakeGeneration(
        Step(messages=[], error=(code, details)), unary_failures=((code, details),)
    )
    with serve(servicer) as server, Client(server.target, max_retries=0, **FAST) as c:
        with pytest.raises(error) as streamed:
            c.complete("x")
        with pytest.raises(error) as unary:
            c.list_models()
    for info, method in ((streamed, "Generate"), (unary, "ListModels")):
        assert type(info.value) is error
        assert isinstance(info.value, RequestError)
        assert (info.value.code, info.value.details, info.value.method) == (code, details, method)
        assert str(info.value) == f"{method}: {code.name}: {details}"


def test_error_types_are_also_builtin_types() -> None:
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(DeadlineExceededError, TimeoutError)


def test_deadline_exceeded() -> None:
    servicer = FakeGeneration(Step(messages=STREAM[:1], hang=True))
    with serve(servicer) as server, Client(server.target, timeout=0.3, max_retries=0) as c:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            c.complete("x")
        assert time.monotonic() - started < 2.0
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(info.value, TimeoutError)


def test_async_deadline_exceeded() -> None:
    servicer = FakeGeneration(Step(messages=[], hang=True))

    async def body(target: str) -> None:
        async with AsyncClient(target, **FAST) as c:
            with pytest.raises(DeadlineExceededError):
                await c.complete("x", timeout=0.3)

    with serve(servicer) as server:
        started = time.monotonic()
        run(body(server.target))
        assert time.monotonic() - started < 2.0


# --- TLS and tokens --------------------------------------------------------------------------


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    files = write_self_signed(tmp_path)
    creds = server_credentials(files.cert_file, files.key_file)
    with serve(FakeGeneration(), credentials=creds) as server:
        with Client(server.target, root_certificates=files.cert_file, **FAST) as c:
            assert c.complete("x").text == "Hello"
        with Client(server.target, root_certificates=files.cert_pem, **FAST) as c:
            assert c.list_models()[0].name == "tiny"
        localhost = server.target.replace("127.0.0.1", "localhost")
        with Client(localhost, root_certificates=str(files.cert_file), **FAST) as c:
            assert c.complete("x").text == "Hello"

        async def body() -> str:
            async with AsyncClient(server.target, root_certificates=files.cert_file) as c:
                return (await c.complete("x")).text

        assert run(body()) == "Hello"

        # Plaintext, and TLS trusting only the system's roots, both fail the handshake.
        plaintext_or_system_roots: list[dict[str, Any]] = [{}, {"tls": True}]
        for options in plaintext_or_system_roots:
            with (
                Client(server.target, max_retries=0, timeout=WAIT_S, **options) as c,
                pytest.raises(UnavailableError),
            ):
                c.complete("x")


def test_tls_client_refuses_a_certificate_it_does_not_trust(tmp_path: Path) -> None:
    served = write_self_signed(tmp_path / "served")
    other = write_self_signed(tmp_path / "other")
    creds = server_credentials(served.cert_file, served.key_file)
    with (
        serve(FakeGeneration(), credentials=creds) as server,
        Client(server.target, root_certificates=other.cert_file, max_retries=0) as c,
        pytest.raises(UnavailableError),
    ):
        c.complete("x", timeout=WAIT_S)
    assert server.servicer.requests == []


def test_bearer_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    servicer = FakeGeneration()
    with serve(servicer, token=TOKEN) as server:
        bad_tokens: list[dict[str, Any]] = [{}, {"token": "wrong-token"}, {"token": TOKEN + "x"}]
        for options in bad_tokens:
            with Client(server.target, **FAST, **options) as c:
                with pytest.raises(UnauthenticatedError, match="UNAUTHENTICATED") as info:
                    c.complete("x")
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(UnauthenticatedError):
                    c.list_models()
        assert servicer.requests == []

        with Client(server.target, token=TOKEN, **FAST) as c:
            assert c.complete("x").text == "Hello"
            assert c.list_models()[0].name == "tiny"
        with Client(server.target, token_file=token_file, **FAST) as c:
            assert c.complete("x").text == "Hello"

        async def body() -> str:
            async with AsyncClient(server.target, token=TOKEN, **FAST) as c:
                return (await c.complete("x")).text

        assert run(body()) == "Hello"
        assert [m["authorization"] for m in servicer.metadata] == [f"Bearer {TOKEN}"] * 3

        # The health service stays open: probes carry no token.
        with grpc.insecure_channel(server.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=WAIT_S
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
