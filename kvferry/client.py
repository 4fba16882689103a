"""The kvferry client SDK: `Client` (blocking) and `AsyncClient` (asyncio) for the router's
`kvferry.v1.Generation` API.

    with kvferry.Client("localhost:50051") as client:
        for chunk in client.generate("Hello", max_tokens=32):
            print(chunk.text, end="", flush=True)

A call's life:

1. Options are validated and the request built client-side (bad sampling values raise
   ValueError before any RPC); the call's deadline is fixed (`timeout`, default the
   client's) and covers every attempt.
2. The RPC runs with the bearer token (if any) as `authorization: Bearer <token>`.
3. UNAVAILABLE is retried with capped, jittered exponential backoff, at most
   `max_retries` times, and only while no chunk of the call has been received: a retry
   after streamed tokens could repeat them. No other status is retried.
4. A failure surfaces as a `kvferry.errors.RequestError` subclass chosen by status code.
5. Closing a `generate()` iterator (`close()`, `aclose()`, or leaving a `for` loop over
   it) cancels the RPC; the router then aborts the request and frees its KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import grpc
from google.protobuf.message import Message

from kvferry import __version__
from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry.client_types import (
    CallAttempts,
    Completion,
    CompletionBuilder,
    GenerateOptions,
    GenerationChunk,
    ModelInfo,
    Prompt,
    RetryPolicy,
    build_generate_request,
    check_timeout,
    ended_without_finish,
)
from kvferry.security import (
    AUTHORIZATION_KEY,
    BEARER_SCHEME,
    read_pem_file,
    read_token_file,
    validate_token,
)

__all__ = ["AsyncClient", "Client"]

_USER_AGENT = f"kvferry-python/{__version__}"


class _ClientBase:
    """Options, credentials and request building shared by both clients."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: str | Path | bytes | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        timeout: float | None = 600.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.1,
        model: str = "",
    ) -> None:
        """Connect to a router at `target` ("host:port").

        `root_certificates` (a PEM file path, or PEM bytes) implies TLS; `tls=True` alone
        trusts the system's roots. `token` or `token_file` is sent as a bearer token.
        `timeout` is each call's default deadline in seconds (None = none), retries
        included; `max_retries` and `retry_backoff_s` govern retries of UNAVAILABLE.
        `model` is the default model name ("" = the model the router serves).
        """
        if not isinstance(target, str) or not target or any(c.isspace() for c in target):
            raise ValueError(f"target must be 'host:port', got {target!r}")
        if not isinstance(model, str):
            raise ValueError(f"model must be a str, got {model!r}")
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token_file(token_file)
        elif token is not None:
            token = validate_token(token, source="token")
        self.target = target
        self._credentials = _channel_credentials(tls, root_certificates)
        self._metadata: tuple[tuple[str, str], ...] = (
            () if token is None else ((AUTHORIZATION_KEY, f"{BEARER_SCHEME} {token}"),)
        )
        self._timeout = check_timeout(timeout)
        self._retry = RetryPolicy(max_retries, retry_backoff_s)
        self._rng = random.Random()
        self._model = model
        self._channel = self._open_channel()
        self._stub = gen_grpc.GenerationStub(self._channel)  # type: ignore[no-untyped-call]

    def _open_channel(self) -> Any:
        raise NotImplementedError

    def _attempts(self, timeout: float | None) -> CallAttempts:
        return CallAttempts(self._retry, self._timeout if timeout is None else timeout, self._rng)

    def _prepare(
        self, prompt: Prompt, options: GenerateOptions
    ) -> tuple[gen_pb.GenerateRequest, CallAttempts]:
        request = build_generate_request(prompt, options, self._model)
        return request, self._attempts(check_timeout(options.get("timeout")))

    def _channel_args(self) -> list[tuple[str, str]]:
        return [("grpc.primary_user_agent", _USER_AGENT)]


def _channel_credentials(
    tls: bool, root_certificates: str | Path | bytes | None
) -> grpc.ChannelCredentials | None:
    if not isinstance(tls, bool):
        raise ValueError(f"tls must be a bool, got {tls!r}")
    if root_certificates is None:
        return grpc.ssl_channel_credentials() if tls else None
    if isinstance(root_certificates, bytes):
        if b"-----BEGIN CERTIFICATE-----" not in root_certificates:
            raise ValueError("root_certificates bytes hold no PEM certificate")
        return grpc.ssl_channel_credentials(root_certificates=root_certificates)
    if not isinstance(root_certificates, str | Path):
        raise ValueError(
            f"root_certificates must be a PEM file path or PEM bytes, got {root_certificates!r}"
        )
    pem = read_pem_file(root_certificates, what="root certificates file", label="CERTIFICATE")
    return grpc.ssl_channel_credentials(root_certificates=pem)


class Client(_ClientBase):
    """A blocking client for a kvferry router. Thread-safe; close it (or use `with`)."""

    def _open_channel(self) -> Any:
        if self._credentials is None:
            return grpc.insecure_channel(self.target, options=self._channel_args())
        return grpc.secure_channel(self.target, self._credentials, options=self._channel_args())

    def generate(
        self, prompt: Prompt, /, **options: Unpack[GenerateOptions]
    ) -> Generator[GenerationChunk, None, None]:
        """Stream the generation of `prompt` (text or token ids) chunk by chunk.

        Validates at once (ValueError/TypeError); the RPC starts with the first `next()`.
        Closing the generator cancels the RPC.
        """
        request, attempts = self._prepare(prompt, options)
        return self._stream(request, attempts)

    def complete(self, prompt: Prompt, /, **options: Unpack[GenerateOptions]) -> Completion:
        """Generate `prompt` to the end and return the whole result."""
        builder = CompletionBuilder()
        with contextlib.closing(self.generate(prompt, **options)) as stream:
            for chunk in stream:
                builder.add(chunk)
        return builder.build()

    def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request; False when it was not running."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty str, got {request_id!r}")
        reply: gen_pb.AbortResponse = self._unary(
            self._stub.Abort, "Abort", gen_pb.AbortRequest(request_id=request_id), timeout
        )
        return reply.aborted

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the cluster serves."""
        reply: gen_pb.ListModelsResponse = self._unary(
            self._stub.ListModels, "ListModels", gen_pb.ListModelsRequest(), timeout
        )
        return [ModelInfo.from_proto(m) for m in reply.models]

    def cluster_status(self, *, timeout: float | None = None) -> gen_pb.ClusterStatus:
        """Every registered worker with its role, load and health."""
        reply: gen_pb.ClusterStatus = self._unary(
            self._stub.GetClusterStatus, "GetClusterStatus", gen_pb.ClusterStatusRequest(), timeout
        )
        return reply

    def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _stream(
        self, request: gen_pb.GenerateRequest, attempts: CallAttempts
    ) -> Generator[GenerationChunk, None, None]:
        while True:
            call = self._stub.Generate(request, timeout=attempts.start(), metadata=self._metadata)
            last: GenerationChunk | None = None
            try:
                for message in call:
                    last = GenerationChunk.from_proto(message)
                    yield last
                if last is None or last.finish_reason is None:
                    raise ended_without_finish("Generate")
                return
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, received=last is not None)
                if delay is None:
                    raise attempts.error(err, "Generate") from err
            finally:
                call.cancel()  # a no-op once the call has ended
            time.sleep(delay)

    def _unary(self, rpc: Any, name: str, request: Message, timeout: float | None) -> Any:
        attempts = self._attempts(check_timeout(timeout))
        while True:
            try:
                return rpc(request, timeout=attempts.start(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, received=False)
                if delay is None:
                    raise attempts.error(err, name) from err
            time.sleep(delay)


class AsyncClient(_ClientBase):
    """An asyncio client for a kvferry router. Create it inside the event loop that uses
    it; close it with `await client.close()` (or `async with`)."""

    def _open_channel(self) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "create AsyncClient inside the event loop that uses it (e.g. in `async def"
                " main()` run by asyncio.run): its channel belongs to that loop"
            ) from None
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self._channel_args())
        return grpc.aio.secure_channel(self.target, self._credentials, options=self._channel_args())

    def generate(
        self, prompt: Prompt, /, **options: Unpack[GenerateOptions]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the generation of `prompt` (text or token ids) chunk by chunk.

        Validates at once (ValueError/TypeError); the RPC starts with the first chunk
        awaited. `aclose()` cancels the RPC: to stop early, iterate under
        `contextlib.aclosing(client.generate(...))`.
        """
        request, attempts = self._prepare(prompt, options)
        return self._stream(request, attempts)

    async def complete(self, prompt: Prompt, /, **options: Unpack[GenerateOptions]) -> Completion:
        """Generate `prompt` to the end and return the whole result."""
        builder = CompletionBuilder()
        async with contextlib.aclosing(self.generate(prompt, **options)) as stream:
            async for chunk in stream:
                builder.add(chunk)
        return builder.build()

    async def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request; False when it was not running."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty str, got {request_id!r}")
        reply: gen_pb.AbortResponse = await self._unary(
            self._stub.Abort, "Abort", gen_pb.AbortRequest(request_id=request_id), timeout
        )
        return reply.aborted

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the cluster serves."""
        reply: gen_pb.ListModelsResponse = await self._unary(
            self._stub.ListModels, "ListModels", gen_pb.ListModelsRequest(), timeout
        )
        return [ModelInfo.from_proto(m) for m in reply.models]

    async def cluster_status(self, *, timeout: float | None = None) -> gen_pb.ClusterStatus:
        """Every registered worker with its role, load and health."""
        reply: gen_pb.ClusterStatus = await self._unary(
            self._stub.GetClusterStatus, "GetClusterStatus", gen_pb.ClusterStatusRequest(), timeout
        )
        return reply

    async def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _stream(
        self, request: gen_pb.GenerateRequest, attempts: CallAttempts
    ) -> AsyncGenerator[GenerationChunk, None]:
        while True:
            call = self._stub.Generate(request, timeout=attempts.start(), metadata=self._metadata)
            last: GenerationChunk | None = None
            try:
                async for message in call:
                    last = GenerationChunk.from_proto(message)
                    yield last
                if last is None or last.finish_reason is None:
                    raise ended_without_finish("Generate")
                return
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, received=last is not None)
                if delay is None:
                    raise attempts.error(err, "Generate") from err
            finally:
                call.cancel()  # a no-op once the call has ended
            await asyncio.sleep(delay)

    async def _unary(self, rpc: Any, name: str, request: Message, timeout: float | None) -> Any:
        attempts = self._attempts(check_timeout(timeout))
        while True:
            try:
                return await rpc(request, timeout=attempts.start(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, received=False)
                if delay is None:
                    raise attempts.error(err, name) from err
            await asyncio.sleep(delay)
