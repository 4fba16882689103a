"""Continuous-batching scheduler: pure bookkeeping, no torch, no I/O.

Each step hands out tokens to close the gap between tokens known and tokens computed,
under a token budget (`max_num_batched_tokens`) and a sequence cap (`max_num_seqs`):
running requests first (decodes and unfinished prefill chunks, oldest first), then waiting
ones in arrival order, reusing prefix-cache hits. When the pool runs out of blocks the
newest running request is preempted: its blocks are freed and it is recomputed later
(its full blocks usually survive in the prefix cache).

    out = scheduler.schedule()          # what to compute this step
    ...model runs, samples...           # (the model runner's job)
    updates = scheduler.update(out, sampled)   # advance counters, append tokens, stop
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams

from .block_pool import BlockId
from .kv_cache_manager import KVCacheManager
from .request import Request, RequestId, RequestStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 128
    """Sequences in one step; bounds the decode batch (and memory for per-step tensors)."""
    max_num_batched_tokens: int = 2048
    """Tokens in one step; bounds step latency so decodes are not starved by long prompts."""
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    """Split long prompts across steps so they never exceed the token budget."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"without chunked prefill, max_num_batched_tokens ({self.max_num_batched_tokens})"
                f" must be >= max_model_len ({self.max_model_len}) or long prompts never run;"
                " enable chunked prefill or raise the budget"
            )


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    """One request's share of a step: compute `token_ids` at positions start.. ."""

    request_id: RequestId
    token_ids: list[int]
    start_position: int
    block_ids: list[BlockId]
    sample: bool
    """True when this step reaches the last known token, so the next one is sampled."""
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_batched_tokens: int
    preempted_ids: list[RequestId] = field(default_factory=list)
    finished_ids: list[RequestId] = field(default_factory=list)
    """Requests that ended since the previous step (their per-request state can go)."""

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(frozen=True, slots=True)
class RemoteAdmission:
    """Blocks reserved for a request whose prompt KV comes from a prefill worker."""

    block_ids: list[BlockId]
    needed_block_positions: list[int]
    """Indices into `block_ids` whose KV must be sent (the rest are prefix-cache hits)."""
    num_cached_tokens: int


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    request: Request
    new_token_ids: list[int]
    finished: bool


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # sorted by arrival
        self.requests: dict[RequestId, Request] = {}
        self._finished_since_step: list[RequestId] = []
        self.num_awaiting_kv = 0
        """Admitted requests whose KV is still arriving (they hold blocks and a seat)."""

    # -- requests --------------------------------------------------------------------------
    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise ValueError if such a request could never run to its end in this engine."""
        total = num_prompt_tokens + max_tokens
        if total > self.config.max_model_len:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total}"
                f" exceeds max_model_len {self.config.max_model_len}"
            )
        blocks = self.kv.blocks_needed(total)
        if blocks > self.kv.pool.num_blocks:
            raise ValueError(
                f"request needs {blocks} KV blocks but the pool holds {self.kv.pool.num_blocks};"
                " shorten it or enlarge the KV budget"
            )

    def add_request(self, request: Request) -> None:
        """Queue a request. `arrival` must increase with every call (FCFS and preemption order)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        self.check_fits(request.num_prompt_tokens, request.params.max_tokens)
        self._reuse_id(request.request_id)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def _reuse_id(self, request_id: RequestId) -> None:
        """A new request under the id of one that ended since the last step: that end must
        not reach the runner, or it would drop the new request's per-request state."""
        if request_id in self._finished_since_step:
            self._finished_since_step = [r for r in self._finished_since_step if r != request_id]

    def finish_requests(self, request_ids: Iterable[RequestId], reason: FinishReason) -> None:
        """End requests from outside the step (abort, stop string). Unknown ids are ignored."""
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is None:
                continue
            if request.status is RequestStatus.RUNNING:
                self.running.remove(request)
            elif request.status is RequestStatus.WAITING_FOR_KV:
                self.num_awaiting_kv -= 1
            else:
                self.waiting.remove(request)
            self._finish(request, reason)

    # -- remote prefill ----------------------------------------------------------------------
    def admit_remote(self, request: Request) -> RemoteAdmission | None:
        """Reserve blocks for the request's prompt, whose KV will be written from outside.

        Returns None (changing nothing) when the pool cannot hold it now. The blocks are
        not published to the prefix cache until `complete_remote`: until then their KV is
        not there.
        """
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        self.check_fits(request.num_prompt_tokens, request.params.max_tokens)
        if len(self.running) + self.num_awaiting_kv >= self.config.max_num_seqs:
            return None
        hits = self.kv.get_computed_blocks(request)
        num_hit = len(hits) * self.kv.block_size
        if (
            self.kv.allocate_slots(request, request.num_tokens - num_hit, hits, publish=False)
            is None
        ):
            return None
        request.status = RequestStatus.WAITING_FOR_KV
        self.num_awaiting_kv += 1
        request.num_cached_tokens = num_hit
        self._reuse_id(request.request_id)
        self.requests[request.request_id] = request
        block_ids = self.kv.block_ids(request.request_id)
        return RemoteAdmission(block_ids, list(range(len(hits), len(block_ids))), num_hit)

    def complete_remote(self, request_id: RequestId, first_token: int) -> RequestUpdate:
        """The prompt's KV has arrived and the prefill side sampled `first_token`."""
        request = self.requests.get(request_id)
        if request is None or request.status is not RequestStatus.WAITING_FOR_KV:
            raise ValueError(f"request {request_id!r} is not waiting for remote KV")
        self.num_awaiting_kv -= 1
        request.num_computed_tokens = request.num_tokens
        self.kv.publish_computed_blocks(request)
        request.output_token_ids.append(first_token)
        reason = self._stop_reason(request, first_token)
        if reason is None:
            request.status = RequestStatus.RUNNING
            bisect.insort(self.running, request, key=lambda r: r.arrival)
        else:
            self._finish(request, reason)
        return RequestUpdate(request, [first_token], reason is not None)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self.kv.free(request)
        del self.requests[request.request_id]
        self._finished_since_step.append(request.request_id)

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    @property
    def has_schedulable(self) -> bool:
        """Requests a step can advance (not those waiting for remote KV)."""
        return bool(self.waiting or self.running)

    # -- schedule --------------------------------------------------------------------------
    def rollback(self, output: SchedulerOutput) -> None:
        """Undo a step whose model run failed: its KV was never (fully) written.

        Blocks published for this step leave the prefix cache and every request scheduled
        in it is preempted, so it is recomputed from scratch (or aborted by the caller).
        """
        for item in output.scheduled:
            request = self.requests.get(item.request_id)
            if request is not None and request.status is RequestStatus.RUNNING:
                self._preempt(request)
        self.kv.pool.uncache(self.kv.published_in_step)
        self.kv.published_in_step = []

    def schedule(self) -> SchedulerOutput:
        self.kv.published_in_step = []
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[RequestId] = []

        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:
                continue
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                continue
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new

        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            request = self.waiting[0]
            hits = self.kv.get_computed_blocks(request)
            num_hit = len(hits) * self.kv.block_size
            num_new = request.num_tokens - num_hit
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break
                num_new = budget
            if self.kv.allocate_slots(request, num_new, hits) is None:
                break
            self.waiting.popleft()
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_hit
            request.num_computed_tokens = num_hit
            request.status = RequestStatus.RUNNING
            bisect.insort(self.running, request, key=lambda r: r.arrival)
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new

        finished, self._finished_since_step = self._finished_since_step, []
        return SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            preempted_ids=preempted,
            finished_ids=finished,
        )

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.token_slice(start, start + num_new),
            start_position=start,
            block_ids=self.kv.block_ids(request.request_id),
            sample=start + num_new == request.num_tokens,
            params=request.params,
        )

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        # Back to the front of the queue, keeping arrival order among preempted requests.
        index = 0
        while index < len(self.waiting) and self.waiting[index].arrival < request.arrival:
            index += 1
        self.waiting.insert(index, request)

    # -- update ----------------------------------------------------------------------------
    def update(self, output: SchedulerOutput, sampled: dict[RequestId, int]) -> list[RequestUpdate]:
        """Advance computed counters, append sampled tokens and finish stopped requests."""
        updates: list[RequestUpdate] = []
        for item in output.scheduled:
            request = self.requests.get(item.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # finished or aborted while the step ran
            request.num_computed_tokens += len(item.token_ids)
            if not item.sample:
                continue
            token = sampled[item.request_id]
            request.output_token_ids.append(token)
            reason = self._stop_reason(request, token)
            if reason is not None:
                self.running.remove(request)
                self._finish(request, reason)
            updates.append(RequestUpdate(request, [token], reason is not None))
        return updates

    def _stop_reason(self, request: Request, token: int) -> FinishReason | None:
        params = request.params
        if token in params.stop_token_ids or (
            not params.ignore_eos and token in request.eos_token_ids
        ):
            return FinishReason.STOP
        if request.num_output_tokens >= params.max_tokens:
            return FinishReason.LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None
