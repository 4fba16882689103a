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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kvferry.errors import ConfigError

from .attention import AttentionBackend
from .block_pool import KVEvent
from .cache_layout import CacheLayout, allocate_kv_caches, plan_cache
from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer
from .kv_cache_manager import KVCacheManager
from .model.loader import load_model, resolve_model
from .model.model_config import ModelConfig
from .model_runner import ModelRunner
from .outputs import EngineStats, RequestOutput
from .request import FinishReason, Request, RequestId
from .sampler import Sampler, TokenLogprob
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerConfig
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        self.device = _resolve_device(config.device)
        self.dtype = _resolve_dtype(config.dtype, self.model_config, self.device)
        self.max_model_len = _resolve_max_model_len(config, self.model_config)
        self.tokenizer = _load_tokenizer(config.tokenizer, folder, self.model_config)
        load_format = "dummy" if folder is None else config.load_format
        self.model = load_model(
            self.model_config,
            folder,
            load_format=load_format,
            dtype=self.dtype,
            device=self.device,
            seed=config.seed,
            attention_backend=AttentionBackend(config.attention_backend),
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
        self.runner = ModelRunner(
            self.model, kv_caches, config.block_size, self.device, Sampler(self.device)
        )
        self._streams: dict[RequestId, _Stream] = {}
        self._arrivals = 0
        log.info(
            "engine ready: model=%s dtype=%s device=%s kv_blocks=%d (%.1f MiB) max_model_len=%d",
            config.model,
            self.dtype,
            self.device,
            self.cache_layout.num_blocks,
            self.cache_layout.total_bytes / 2**20,
            self.max_model_len,
        )

    # -- requests --------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int], params: SamplingParams) -> list[int]:
        """Tokenize and validate a prompt against this engine; raises ValueError if bad."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not ids:
                raise ValueError("prompt is empty")
            vocab = self.model_config.vocab_size
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                    raise ValueError(
                        f"prompt token id {t!r} is outside the vocabulary [0, {vocab})"
                    )
        self.scheduler.check_fits(len(ids), params.max_tokens)
        return ids

    def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
    ) -> None:
        params = params or SamplingParams()
        if not request_id:
            raise ValueError("request_id must be a non-empty string")
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
        self.scheduler.add_request(request)
        self._streams[rid] = _Stream(
            detok=IncrementalDetokenizer(
                self.tokenizer,
                ids,
                stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output,
                skip_special_tokens=params.skip_special_tokens,
            ),
            logprobs=[] if params.logprobs is not None else None,
        )

    def abort(self, request_id: str) -> bool:
        """Cancel a request and free its blocks. Returns False if it was not in the engine."""
        rid = RequestId(request_id)
        if self._streams.pop(rid, None) is None:
            return False
        self.scheduler.finish_requests([rid], FinishReason.ABORT)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # -- step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        if out.is_empty:
            if self.scheduler.num_unfinished:
                raise RuntimeError("scheduler made no progress with requests pending")
            self.runner.execute(out)  # releases per-request sampler state
            return []
        result = self.runner.execute(out)
        outputs: list[RequestOutput] = []
        for update in self.scheduler.update(out, result.sampled):
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
            if stream.logprobs is not None and rid in result.logprobs:
                stream.logprobs.append(result.logprobs[rid])
            finished = request.is_finished
            if finished:
                del self._streams[rid]
            outputs.append(
                RequestOutput(
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
            )
        return outputs

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
        )

    def take_kv_events(self) -> list[KVEvent]:
        """Block stored/removed events since the last call (for the router's cache index)."""
        return self.kv.pool.take_events()


def _load_tokenizer(name: str | None, folder: Path | None, model: ModelConfig) -> Tokenizer:
    if name == "byte" or (name is None and folder is None):
        tokenizer = load_tokenizer(None, byte_level=True)
    else:
        tokenizer = load_tokenizer(Path(name) if name else folder)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only"
            f" {model.vocab_size}; pass the model's own tokenizer"
        )
    return tokenizer


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is visible; use 'cpu'")
    return torch.device(name)


def _resolve_dtype(name: str, model: ModelConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # NOTE: CPU bf16/fp16 matmuls are slow and less exact
    if model.torch_dtype in ("bfloat16", "float16"):
        return _DTYPES[model.torch_dtype]
    return torch.bfloat16


def _resolve_max_model_len(config: EngineConfig, model: ModelConfig) -> int:
    limit = model.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ConfigError(
            f"max_model_len {config.max_model_len} exceeds the model's"
            f" max_position_embeddings {limit}"
        )
    return config.max_model_len or limit
