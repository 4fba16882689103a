"""What the engine hands back per request per step."""

from __future__ import annotations

from dataclasses import dataclass

from kvferry.finish import FinishReason

from .request import RequestId
from .sampler import TokenLogprob


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """A request's state after a step: cumulative results plus this step's delta."""

    request_id: RequestId
    prompt_token_ids: list[int]
    token_ids: list[int]
    """All output token ids so far (including an EOS or stop token that ended it)."""
    text: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob] | None
    num_cached_tokens: int
    """Prompt tokens served from the prefix cache."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    block_size: int
    total_blocks: int
    used_blocks: int
    free_blocks: int
    cached_blocks: int
    """Blocks holding reusable prefix KV (in use or evictable)."""
    num_running: int
    num_waiting: int
    kv_cache_bytes: int
    prefill_tokens_waiting: int = 0
    """Prompt tokens not yet computed, over waiting and running requests."""
