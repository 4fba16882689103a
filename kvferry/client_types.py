"""The client SDK's pure half: generate() options, typed chunks and results, the mapping
of gRPC statuses to errors, and when to retry.

Shared by `Client` and `AsyncClient` (`kvferry.client`, the I/O shell): every proto <->
Python conversion of the SDK lives here (sampling values themselves go through
`kvferry.wire`), so the two clients differ only in how they wait. No I/O; the retry
bookkeeping takes its clock and random source.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry.errors import (
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
from kvferry.wire import FINISH_FROM_PROTO, sampling_to_proto

Prompt = str | Sequence[int]
"""Prompt text (tokenized by the router) or token ids."""

_MAX_TOKEN_ID = 2**32  # TokenIds.ids is uint32
_MAX_BACKOFF_S = 5.0  # cap of one retry's wait: a router back within seconds is found soon


class GenerateOptions(TypedDict, total=False):
    """Keyword options of `generate()` and `complete()`.

    Sampling options take `kvferry.SamplingParams`' defaults when left out (max_tokens=16,
    temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, no seed, no stops, no logprobs) and
    are validated client-side (ValueError) before any RPC. `model` defaults to the
    client's model, `timeout` (seconds for the whole call, retries included) to the
    client's timeout; an empty `request_id` lets the router assign one.
    """

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    stop: str | Sequence[str]
    stop_token_ids: Sequence[int]
    ignore_eos: bool
    logprobs: int | None
    include_stop_str_in_output: bool
    skip_special_tokens: bool
    model: str | None
    request_id: str
    timeout: float | None


SAMPLING_KEYS = frozenset(f.name for f in fields(SamplingParams))
CALL_KEYS = frozenset({"model", "request_id", "timeout"})


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One alternative token and its natural-log probability."""

    token_id: int
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's logprob and the most likely alternatives, most likely first."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()

    @classmethod
    def from_proto(cls, msg: gen_pb.TokenLogprob) -> TokenLogprob:
        top = tuple(TopLogprob(t.token_id, t.logprob) for t in msg.top)
        return cls(msg.token_id, msg.logprob, top)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a finished request."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from a prefix cache

    @classmethod
    def from_proto(cls, msg: gen_pb.Usage) -> Usage:
        return cls(msg.prompt_tokens, msg.completion_tokens, msg.cached_tokens)


@dataclass(frozen=True, slots=True)
class Timing:
    """Server-side timings in seconds since the router received the request; 0 where the
    message did not report a field (ttft/queue/kv_transfer come with the first token,
    e2e with the last message; kv_transfer_s is also 0 when no KV moved)."""

    ttft_s: float = 0.0
    queue_s: float = 0.0
    kv_transfer_s: float = 0.0
    e2e_s: float = 0.0

    @classmethod
    def from_proto(cls, msg: gen_pb.Timing) -> Timing:
        return cls(msg.ttft_s, msg.queue_s, msg.kv_transfer_s, msg.e2e_s)

    def merge(self, later: Timing) -> Timing:
        """These timings updated with the fields `later` reports."""
        return Timing(
            later.ttft_s or self.ttft_s,
            later.queue_s or self.queue_s,
            later.kv_transfer_s or self.kv_transfer_s,
            later.e2e_s or self.e2e_s,
        )


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One streamed message: the tokens sampled since the previous chunk.

    `text` is the detokenized delta (it may lag `token_ids` inside a multi-byte
    character). The last chunk has `finish_reason` and `usage` set.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None

    @classmethod
    def from_proto(cls, msg: gen_pb.GenerateResponse) -> GenerationChunk:
        # NOTE: a finish reason newer than this client reads as None (still generating).
        return cls(
            request_id=msg.request_id,
            token_ids=tuple(msg.token_ids),
            text=msg.text,
            logprobs=tuple(TokenLogprob.from_proto(lp) for lp in msg.logprobs),
            finish_reason=FINISH_FROM_PROTO.get(msg.finish_reason),
            usage=Usage.from_proto(msg.usage) if msg.HasField("usage") else None,
            timing=Timing.from_proto(msg.timing) if msg.HasField("timing") else None,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation, as `complete()` returns it.

    `ttft_s` and `e2e_s` are measured by the client from the `complete()` call (retries
    and connection set-up included); `server_timing` merges what the router reported.
    `ttft_s` is None when no token was generated.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage | None
    logprobs: tuple[TokenLogprob, ...]
    ttft_s: float | None
    e2e_s: float
    server_timing: Timing | None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model and the healthy workers that serve it."""

    name: str
    max_model_len: int
    prefill_workers: int
    decode_workers: int

    @classmethod
    def from_proto(cls, msg: gen_pb.ModelInfo) -> ModelInfo:
        return cls(msg.name, msg.max_model_len, msg.prefill_workers, msg.decode_workers)


@dataclass(slots=True)
class CompletionBuilder:
    """Folds the chunks of one stream into a `Completion`, timing them on `clock`."""

    clock: Callable[[], float] = time.perf_counter
    _start: float = field(init=False)
    _ttft_s: float | None = field(init=False, default=None)
    _request_id: str = field(init=False, default="")
    _text: list[str] = field(init=False, default_factory=list)
    _token_ids: list[int] = field(init=False, default_factory=list)
    _logprobs: list[TokenLogprob] = field(init=False, default_factory=list)
    _last: GenerationChunk | None = field(init=False, default=None)
    _timing: Timing | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._start = self.clock()

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.token_ids and self._ttft_s is None:
            self._ttft_s = self.clock() - self._start
        self._request_id = chunk.request_id or self._request_id
        self._text.append(chunk.text)
        self._token_ids += chunk.token_ids
        self._logprobs += chunk.logprobs
        if chunk.timing is not None:
            self._timing = (
                chunk.timing if self._timing is None else self._timing.merge(chunk.timing)
            )
        self._last = chunk

    def build(self) -> Completion:
        last = self._last
        if last is None or last.finish_reason is None:
            raise RuntimeError("build() needs the stream's last chunk (with a finish_reason)")
        return Completion(
            request_id=self._request_id,
            text="".join(self._text),
            token_ids=tuple(self._token_ids),
            finish_reason=last.finish_reason,
            usage=last.usage,
            logprobs=tuple(self._logprobs),
            ttft_s=self._ttft_s,
            e2e_s=self.clock() - self._start,
            server_timing=self._timing,
        )


def build_generate_request(
    prompt: Prompt, options: Mapping[str, Any], default_model: str
) -> gen_pb.GenerateRequest:
    """The GenerateRequest for `generate(prompt, **options)`.

    Raises TypeError for an unknown option or a prompt of the wrong type, ValueError for a
    bad value (sampling values are checked by SamplingParams).
    """
    unknown = options.keys() - SAMPLING_KEYS - CALL_KEYS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    params = SamplingParams(**{k: v for k, v in options.items() if k in SAMPLING_KEYS})
    model = options.get("model")
    model = default_model if model is None else model
    request_id = options.get("request_id", "")
    for name, value in (("model", model), ("request_id", request_id)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    request = gen_pb.GenerateRequest(
        request_id=request_id, model=model, sampling=sampling_to_proto(params)
    )
    if isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(_token_ids(prompt))
    return request


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """`value` as a deadline in seconds (None = no deadline); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite (None = no deadline), got {value}")
    return float(value)


def _token_ids(prompt: object) -> list[int]:
    if not isinstance(prompt, list | tuple):
        raise TypeError(
            f"prompt must be a str (text) or a list of token ids, got {type(prompt).__name__}"
        )
    for t in prompt:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"prompt token ids must be ints, got {t!r}")
        if not 0 <= t < _MAX_TOKEN_ID:
            raise ValueError(f"prompt token ids must be in [0, 2**32), got {t}")
    return list(prompt)


_ERRORS: dict[grpc.StatusCode, type[RequestError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
}


def request_error(err: grpc.RpcError, method: str) -> RequestError:
    """The typed error for a failed RPC, carrying the server's status and details."""
    code = err.code()
    return _ERRORS.get(code, RequestError)(code, err.details() or "", method=method)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How UNAVAILABLE is retried: at most `max_retries` times, waiting `backoff_s`
    doubled per retry, capped at `max_backoff_s`, each wait jittered into [d/2, d] so
    that clients cut off together do not come back together."""

    max_retries: int
    backoff_s: float
    max_backoff_s: float = _MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError(f"max_retries must be an integer, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (0 = never retry), got {self.max_retries}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} must be >= 0 and finite, got {value}")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0**retry)
        return ceiling * rng.uniform(0.5, 1.0)


class CallAttempts:
    """The attempts of one call: the deadline they share and whether to try again."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy, self._rng, self._clock = policy, rng, clock
        self._deadline = None if timeout is None else clock() + timeout
        self.made = 0

    def start(self) -> float | None:
        """Count an attempt; the seconds left for it (None = no deadline)."""
        self.made += 1
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock())

    def retry_delay(self, err: grpc.RpcError, *, received: bool) -> float | None:
        """Seconds to wait before retrying after `err`, or None when it must surface:
        not UNAVAILABLE, a chunk already received, retries spent or no time left."""
        if received or err.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        if self.made > self._policy.max_retries:
            return None
        delay = self._policy.delay(self.made - 1, self._rng)
        if self._deadline is not None and self._clock() + delay >= self._deadline:
            return None
        return delay

    def error(self, err: grpc.RpcError, method: str) -> RequestError:
        error = request_error(err, method)
        if self.made > 1:
            error.add_note(f"gave up after {self.made} attempts")
        return error


def ended_without_finish(method: str) -> RequestError:
    """The error for a stream that ended without its last message (a protocol breach)."""
    return RequestError(
        grpc.StatusCode.INTERNAL,
        "the stream ended without a finish_reason (a server bug)",
        method=method,
    )
