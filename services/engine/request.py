"""A request inside the engine: tokens known vs tokens computed.

The scheduler's whole view of a request is two counters. `num_tokens` grows as tokens are
known (prompt, then each sampled token); `num_computed_tokens` grows as their KV lands in
the cache, whether computed here, found in the prefix cache, or received from a prefill
worker. The gap is the work left.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams

from .block_hash import BlockHash

RequestId = NewType("RequestId", str)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_KV = "waiting_for_kv"
    """Admitted with blocks reserved; its prompt KV is arriving from a prefill worker."""
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    request_id: RequestId
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...]
    arrival: int
    """Monotonic admission counter: FCFS order and preemption victim choice."""
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    """Prompt tokens found in the prefix cache at first scheduling (for stats)."""
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    block_hashes: list[BlockHash] = field(default_factory=list)
    """Chained hashes of the full blocks of `all_token_ids` seen so far."""
    num_preemptions: int = 0

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_slice(self, start: int, stop: int) -> list[int]:
        """Token ids at positions [start, stop) of prompt + output, without a full copy."""
        n_prompt = len(self.prompt_token_ids)
        if stop <= n_prompt:
            return self.prompt_token_ids[start:stop]
        if start >= n_prompt:
            return self.output_token_ids[start - n_prompt : stop - n_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: stop - n_prompt]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
