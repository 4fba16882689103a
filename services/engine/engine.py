"""The step-level engine that workers wrap: add requests, step, abort, stats.

    engine = LLMEngine(EngineConfig(model="tiny"))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=8))
    while engine.has_unfinished_requests():
        for out in engine.step():
            ...  # out.new_token_ids, out.text_delta, out.finished

One step = schedule (pure bookkeeping) -> run the model and sample -> update counters ->
detokenize and check stop strings. Bad input raises `ValueError` from `add_request` and
leaves every other request untouched.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from kvferry.errors import TransferError
from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams

from .block_pool import KVEvent
from .cache_layout import CacheLayout, allocate_kv_caches, plan_cache
from .config import EngineConfig
from .cuda_graphs import DecodeGraphs
from .detokenizer import IncrementalDetokenizer
from .incoming_kv import IncomingKV
from .kv_cache_manager import KVCacheManager
from .model.loader import load_model, resolve_model
from .model_runner import KVExport, ModelRunner
from .outputs import EngineStats, RequestOutput
from .request import Request, RequestId
from .resolve import (
    resolve_attention_backend,
    resolve_cuda_graphs,
    resolve_device,
    resolve_dtype,
    resolve_max_model_len,
    resolve_tokenizer,
)
from .sampler import Sampler, SampleRow, TokenLogprob
from .scheduler import RemoteAdmission, RequestUpdate, Scheduler, SchedulerConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    """Per-request output state kept beside the scheduler's `Request`."""

    detok: IncrementalDetokenizer
    logprobs: list[TokenLogprob] | None
    text: list[str] = field(default_factory=list)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config, folder = resolve_model(config.model)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.model_config, self.device)
        self.max_model_len = resolve_max_model_len(config, self.model_config)
        self.tokenizer = resolve_tokenizer(config.tokenizer, folder, self.model_config)
        self.attention_backend = resolve_attention_backend(config.attention_backend, self.device)
        load_format = "dummy" if folder is None else config.load_format
        self.model = load_model(
            self.model_config,
            folder,
            load_format=load_format,
            dtype=self.dtype,
            device=self.device,
            seed=config.seed,
            attention_backend=self.attention_backend,
        )
        self.cache_layout: CacheLayout = plan_cache(
            config, self.model_config, self.dtype, self.device
        )
        kv_caches = allocate_kv_caches(self.cache_layout, self.device)
        self.kv = KVCacheManager(
            self.cache_layout.num_blocks,
            config.block_size,
            enable_caching=config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=self.max_model_len,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.kv,
        )
        graphs = None
        if resolve_cuda_graphs(config, self.device, self.attention_backend):
            graphs = DecodeGraphs(
                self.model,
                kv_caches,
                max_batch=config.max_num_seqs,
                max_blocks_per_seq=-(-self.max_model_len // config.block_size),
                device=self.device,
            )
        self.runner = ModelRunner(
            self.model,
            kv_caches,
            config.block_size,
            self.device,
            Sampler(self.device),
            attention_backend=self.attention_backend,
            decode_graphs=graphs,
        )
        self._streams: dict[RequestId, _Stream] = {}
        self._exports: dict[RequestId, KVExport] = {}
        self.stalled = False
        """The last step scheduled nothing: blocks are held by requests awaiting KV."""
        self._incoming: dict[RequestId, IncomingKV] = {}
        self._arrivals = 0
        log.info(
            "engine ready: model=%s dtype=%s device=%s attention=%s cuda_graphs=%s kv_blocks=%d"
            " (%.1f MiB) max_model_len=%d",
            config.model,
            self.dtype,
            self.device,
            self.attention_backend.value,
            graphs is not None,
            self.cache_layout.num_blocks,
            self.cache_layout.total_bytes / 2**20,
            self.max_model_len,
        )

    # -- requests --------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int], params: SamplingParams) -> list[int]:
        """Tokenize and validate a prompt against this engine; raises ValueError if bad."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = _token_ids(prompt, self.model_config.vocab_size)
        self.scheduler.check_fits(len(ids), params.max_tokens)
        return ids

    def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        kv_export: KVExport | None = None,
        skip_draws: int = 0,
    ) -> None:
        """Queue a request. With `kv_export`, the KV of the listed blocks is handed to its
        sink layer by layer in the step that completes the prompt (a prefill worker).
        `skip_draws`: tokens of a seeded request already sampled elsewhere (the prompt ends
        with them, after a worker failure); its random stream continues after them."""
        request = self._new_request(request_id, prompt, params)
        if kv_export is not None:
            bad = [
                p
                for p in kv_export.block_positions
                if p >= self.kv.blocks_needed(request.num_tokens) or p < 0
            ]
            if bad:
                raise ValueError(f"kv_export block positions {bad} are outside the prompt's blocks")
        self.scheduler.add_request(request)
        self._track(request)
        self._skip_draws(request, skip_draws)
        if kv_export is not None:
            self._exports[request.request_id] = kv_export

    def _skip_draws(self, request: Request, draws: int) -> None:
        if draws < 0:
            raise ValueError(f"skip_draws must be >= 0, got {draws}")
        row = SampleRow(request.request_id, request.params)
        self.runner.sampler.advance(row, self.model_config.vocab_size, draws)

    def _new_request(
        self, request_id: str, prompt: str | Sequence[int], params: SamplingParams | None
    ) -> Request:
        params = SamplingParams() if params is None else params
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        rid = RequestId(request_id)
        if rid in self._streams:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        ids = self.encode_prompt(prompt, params)
        request = Request(
            request_id=rid,
            prompt_token_ids=ids,
            params=params,
            eos_token_ids=self.model_config.eos_token_ids,
            arrival=self._arrivals,
        )
        self._arrivals += 1
        self.runner.sampler.forget([rid])  # a reused id starts a fresh random stream
        return request

    def _track(self, request: Request) -> None:
        params = request.params
        self._streams[request.request_id] = _Stream(
            detok=IncrementalDetokenizer(
                self.tokenizer,
                request.prompt_token_ids,
                stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output,
                skip_special_tokens=params.skip_special_tokens,
            ),
            logprobs=[] if params.logprobs is not None else None,
        )

    # -- remote prefill (decode worker side) ------------------------------------------------
    def admit_remote(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams | None = None,
        *,
        skip_draws: int = 0,
    ) -> RemoteAdmission | None:
        """Reserve blocks for a request whose prompt KV a prefill worker will send.

        Returns which block positions must be sent (the rest are prefix-cache hits), or
        None when the pool cannot hold it now (try another worker or later).
        """
        request = self._new_request(request_id, prompt, params)
        admission = self.scheduler.admit_remote(request)
        if admission is None:
            return None
        self._track(request)
        self._skip_draws(request, skip_draws)
        self._incoming[request.request_id] = IncomingKV(
            admission, self.model_config.num_hidden_layers
        )
        return admission

    def write_remote_kv(
        self, request_id: str, block_positions: Sequence[int], layer_start: int, kv: torch.Tensor
    ) -> None:
        """Store received KV `[layers, 2, len(block_positions), BS, Hkv, D]` for a request
        admitted with `admit_remote`. Raises TransferError for anything that does not fit."""
        incoming = self._incoming.get(RequestId(request_id))
        if incoming is None:
            raise TransferError(f"request {request_id!r} is not waiting for KV here")
        layout = self.cache_layout
        expected = (len(block_positions), layout.block_size, layout.num_kv_heads, layout.head_dim)
        if kv.dim() != 6 or kv.shape[1] != 2 or tuple(kv.shape[2:]) != expected:
            raise TransferError(
                f"KV for {request_id!r} has shape {tuple(kv.shape)}; expected"
                f" [layers, 2, {', '.join(map(str, expected))}]"
            )
        block_ids = incoming.accept(list(block_positions), layer_start, kv.shape[0])
        self.runner.write_kv(block_ids, layer_start, kv)

    def complete_remote(
        self, request_id: str, first_token_id: int, first_logprob: TokenLogprob | None = None
    ) -> RequestOutput:
        """All KV has arrived and the prefill worker sampled `first_token_id`: join the
        request to the running batch. Its output starts with that token."""
        rid = RequestId(request_id)
        incoming = self._incoming.get(rid)
        if incoming is None:
            raise TransferError(f"request {request_id!r} is not waiting for KV here")
        missing = incoming.missing()
        if missing:
            raise TransferError(f"request {request_id!r} still lacks KV for {missing}")
        if not 0 <= first_token_id < self.model_config.vocab_size:
            raise ValueError(f"first token id {first_token_id} is outside the vocabulary")
        del self._incoming[rid]
        update = self.scheduler.complete_remote(rid, first_token_id)
        params = update.request.params
        self.runner.sampler.advance(SampleRow(rid, params), self.model_config.vocab_size, 1)
        return self._emit(update, first_logprob)

    def abort(self, request_id: str) -> bool:
        """Cancel a request and free its blocks. Returns False if it was not in the engine."""
        rid = RequestId(request_id)
        if self._streams.pop(rid, None) is None:
            return False
        self._exports.pop(rid, None)
        self._incoming.pop(rid, None)
        self.scheduler.finish_requests([rid], FinishReason.ABORT)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def has_work(self) -> bool:
        """Whether `step()` can make progress (requests waiting for remote KV cannot).

        After a step that scheduled nothing because remote reservations hold the blocks
        (`stalled`), nothing changes until KV lands or a request ends.
        """
        return self.scheduler.has_schedulable

    # -- step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        self.stalled = out.is_empty and self.scheduler.num_awaiting_kv > 0
        if out.is_empty:
            if self.scheduler.has_schedulable and not self.stalled:
                raise RuntimeError("scheduler made no progress with requests pending")
            self.runner.execute(out)  # releases per-request sampler state
            return []
        try:
            result = self.runner.execute(out, self._exports)
        except BaseException:
            # NOTE: blocks were published at schedule time; their KV is not there.
            self.scheduler.rollback(out)
            raise
        return [
            self._emit(update, result.logprobs.get(update.request.request_id))
            for update in self.scheduler.update(out, result.sampled)
        ]

    def _emit(self, update: RequestUpdate, logprob: TokenLogprob | None) -> RequestOutput:
        """Detokenize a request's new tokens, apply stop strings, and build its output."""
        request = update.request
        rid = request.request_id
        stream = self._streams[rid]
        step = stream.detok.update(update.new_token_ids)
        delta = step.text_delta
        if step.stop_matched is not None:
            if update.finished:  # the same token also hit a length limit: the stop wins
                request.finish_reason = FinishReason.STOP
            else:
                self.scheduler.finish_requests([rid], FinishReason.STOP)
        elif update.finished:
            delta += stream.detok.flush()
        stream.text.append(delta)
        if stream.logprobs is not None:
            # NOTE: a token sampled elsewhere (remote prefill) may come without its logprob;
            # a NaN placeholder keeps logprobs[i] aligned with token_ids[i].
            stream.logprobs.extend(
                [logprob]
                if logprob is not None
                else [TokenLogprob(t, float("nan"), ()) for t in update.new_token_ids]
            )
        finished = request.is_finished
        if finished:
            del self._streams[rid]
            self._exports.pop(rid, None)
        return RequestOutput(
            request_id=rid,
            prompt_token_ids=request.prompt_token_ids,
            token_ids=list(request.output_token_ids),
            text="".join(stream.text),
            new_token_ids=update.new_token_ids,
            text_delta=delta,
            finished=finished,
            finish_reason=request.finish_reason,
            logprobs=list(stream.logprobs) if stream.logprobs is not None else None,
            num_cached_tokens=request.num_cached_tokens,
        )

    # -- introspection ---------------------------------------------------------------------
    def stats(self) -> EngineStats:
        pool = self.kv.pool
        return EngineStats(
            block_size=self.config.block_size,
            total_blocks=pool.num_blocks,
            used_blocks=pool.num_used_blocks,
            free_blocks=pool.num_free_blocks,
            cached_blocks=pool.num_cached_blocks,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_bytes=self.cache_layout.total_bytes,
            prefill_tokens_waiting=sum(
                max(0, r.num_prompt_tokens - r.num_computed_tokens)
                for r in (*self.scheduler.waiting, *self.scheduler.running)
            ),
        )

    def take_kv_events(self) -> list[KVEvent]:
        """Block stored/removed events since the last call (for the router's cache index)."""
        return self.kv.pool.take_events()


def _token_ids(prompt: object, vocab: int) -> list[int]:
    """A prompt given as token ids (any integer sequence, numpy included), validated."""
    kind = type(prompt).__name__
    if prompt is None or isinstance(prompt, bytes | bytearray | Mapping):
        raise ValueError(f"prompt must be a string or a sequence of token ids, got {kind}")
    try:
        items = list(prompt)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(
            f"prompt must be a string or a sequence of token ids, got {kind}"
        ) from None
    if not items:
        raise ValueError("prompt is empty")
    ids: list[int] = []
    for t in items:
        try:
            if isinstance(t, bool):
                raise TypeError
            value = operator.index(t)
        except TypeError:
            raise ValueError(f"prompt token id {t!r} is not an integer") from None
        if not 0 <= value < vocab:
            raise ValueError(f"prompt token id {value} is outside the vocabulary [0, {vocab})")
        ids.append(value)
    return ids
