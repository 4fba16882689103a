"""The simulated workers: what each GPU does with the requests the router gives it.

Prefill worker: a FIFO queue; each pass takes whole prompts up to a token budget, reuses
the leading blocks its own prefix cache holds at that moment, and computes the rest
(`GpuModel.prefill_s`). Its KV leaves layer by layer during the pass (the simulation
times the push); the blocks stay pinned until the push ends, then remain as prefix cache.

Decode worker: admits a request by reserving its prompt + output KV (reusing prompt blocks
it caches) or refuses (full, or `max_num_seqs` admitted); runs continuous batching, one
token per running sequence per step (`GpuModel.decode_step_s`); a request joins at the
first step after its KV is complete. A request it runs whole computes its prompt in chunks
beside the batch first. Every step is O(log batch): finishes come off a heap keyed by step.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from kvferry.services.router.workers import WorkerLoad, WorkerRecord
from kvferry.topology import Tier

from .events import EventLoop
from .hardware import GpuModel
from .kv_cache import BlockCache
from .trace import SimRequest


@dataclass(slots=True, eq=False)
class Job:
    """One request's life in the simulation (times in simulated seconds)."""

    req: SimRequest
    decode: DecodeWorker | None = None
    prefill: PrefillWorker | None = None
    predicted_hit_blocks: int = 0  # what placement expected on the computing worker
    prefill_tokens: int = 0  # counted on its prefill worker by the router until it returns
    decode_hit_blocks: int = 0  # prompt blocks the decode worker already had at admission
    hit_blocks: int = 0  # prompt blocks the computing worker held when it started
    hit_tokens: int = 0  # prompt tokens it reused (a fully cached prompt recomputes one)
    computed: int = 0  # prompt tokens whose KV exists on the worker computing it
    rejections: int = 0  # admissions refused (decode worker full)
    backlog_s: float = 0.0  # time waiting for any decode worker to have room
    sent_at: float = 0.0  # handed to its prefill worker
    kv_bytes: int = 0
    wire_s: float = 0.0  # its push's time on the link alone
    tier: Tier | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    ctx0: int = 0  # context tokens = ctx0 + decode worker's step count, while running
    finish_step: int = 0

    @property
    def rid(self) -> int:
        return self.req.index


class Hooks(Protocol):
    """What the workers report to the simulation (the router and the network)."""

    loop: EventLoop
    gpu: GpuModel

    def push(self, job: Job, src: PrefillWorker, start: float, end: float) -> None:
        """Start moving job's KV, computed over [start, end], to its decode worker."""

    def first_token(self, job: Job) -> None: ...

    def finished(self, job: Job) -> None: ...


class SimWorker:
    def __init__(self, record: WorkerRecord, cache: BlockCache, hooks: Hooks) -> None:
        self.record = record
        self.id = record.info.worker_id
        self.labels = record.info.labels
        self.cache = cache
        self.hooks = hooks

    def _kv_load(self) -> tuple[int, int]:
        bs = self.cache.block_tokens
        return self.cache.free_tokens // bs, self.cache.capacity // bs


class PrefillWorker(SimWorker):
    def __init__(
        self, record: WorkerRecord, cache: BlockCache, hooks: Hooks, batch_tokens: int
    ) -> None:
        super().__init__(record, cache, hooks)
        self.batch_tokens = batch_tokens
        self.queue: deque[Job] = deque()
        self.queued_tokens = 0
        self.running: list[Job] = []
        self.running_tokens = 0
        self.busy = False

    def enqueue(self, job: Job) -> None:
        job.prefill = self
        job.sent_at = self.hooks.loop.now
        self.queue.append(job)
        self.queued_tokens += job.req.input_tokens
        if not self.busy:
            self._start()

    def memory_freed(self) -> None:
        """A push ended: a pass waiting for KV memory may start now."""
        if not self.busy and self.queue:
            self._start()

    def _start(self) -> None:
        batch: list[Job] = []
        prompts: list[tuple[int, int]] = []
        new_tokens = 0
        bs = self.cache.block_tokens
        while self.queue:
            job = self.queue[0]
            req = job.req
            # NOTE: a fully cached prompt still computes its last token (to sample from).
            hit = self.cache.hits(req.block_hashes)
            cached = min(hit * bs, req.input_tokens - 1)
            new = req.input_tokens - cached
            if batch and new_tokens + new > self.batch_tokens:
                break
            if self.cache.allocate(job.rid, req.block_hashes, req.input_tokens) is None:
                break  # KV memory is held by pushes in flight; retried when one ends
            self.queue.popleft()
            self.queued_tokens -= req.input_tokens
            job.hit_blocks = hit
            job.hit_tokens = job.computed = cached
            batch.append(job)
            prompts.append((cached, req.input_tokens))
            new_tokens += new
        if not batch:
            self.busy = False
            return
        self.busy = True
        self.running = batch
        self.running_tokens = new_tokens
        loop = self.hooks.loop
        seconds = self.hooks.gpu.prefill_s(prompts)
        for job in batch:
            self.hooks.push(job, self, loop.now, loop.now + seconds)
        loop.after(seconds, self._pass_done, batch)

    def _pass_done(self, batch: list[Job]) -> None:
        for job in batch:
            job.computed = job.req.input_tokens
            self.cache.commit(job.rid)
        self.running = []
        self.running_tokens = 0
        self._start()

    def load(self) -> WorkerLoad:
        free, total = self._kv_load()
        return WorkerLoad(
            num_waiting=len(self.queue),
            num_running=len(self.running),
            prefill_tokens_waiting=self.queued_tokens + self.running_tokens,
            free_kv_blocks=free,
            total_kv_blocks=total,
        )


class DecodeWorker(SimWorker):
    def __init__(
        self,
        record: WorkerRecord,
        cache: BlockCache,
        hooks: Hooks,
        max_num_seqs: int,
        chunk_tokens: int,
    ) -> None:
        super().__init__(record, cache, hooks)
        self.max_num_seqs = max_num_seqs
        self.chunk_tokens = chunk_tokens
        self.admitted = 0
        self.local: deque[Job] = deque()  # prompts it computes itself, FIFO
        self.joining: list[Job] = []  # KV complete: join at the next step
        self._finishing: list[tuple[int, int, Job]] = []  # (finish step, rid, job)
        self.batch = 0
        self.context = 0  # KV tokens the running sequences read per step
        self.steps = 0
        self.stepping = False

    def can_admit(self, job: Job) -> bool:
        """Whether `admit(job)` would succeed now (no side effects)."""
        req = job.req
        return self.admitted < self.max_num_seqs and self.cache.fits(
            req.block_hashes, req.input_tokens + req.output_tokens
        )

    def admit(self, job: Job) -> int | None:
        """Reserve job's KV; the prompt blocks it already caches, or None when full."""
        if self.admitted >= self.max_num_seqs:
            return None
        req = job.req
        hit = self.cache.allocate(job.rid, req.block_hashes, req.input_tokens + req.output_tokens)
        if hit is None:
            return None
        self.admitted += 1
        job.decode = self
        job.decode_hit_blocks = hit
        return hit

    def run_whole(self, job: Job) -> None:
        """Compute job's prompt here (no prefill hop), then decode it."""
        req = job.req
        job.hit_blocks = job.decode_hit_blocks
        job.hit_tokens = job.computed = min(
            job.decode_hit_blocks * self.cache.block_tokens, req.input_tokens - 1
        )
        self.local.append(job)
        self._kick()

    def kv_arrived(self, job: Job) -> None:
        self.cache.commit(job.rid)
        self._join(job)

    def _join(self, job: Job) -> None:
        if job.req.output_tokens == 1:  # the prompt's pass made its only token
            self._finish(job)
            return
        self.joining.append(job)
        self._kick()

    def _kick(self) -> None:
        if not self.stepping:
            self._step()

    def _step(self) -> None:
        for job in self.joining:
            self.batch += 1
            job.ctx0 = job.req.input_tokens - self.steps
            self.context += job.req.input_tokens
            job.finish_step = self.steps + job.req.output_tokens - 1
            heapq.heappush(self._finishing, (job.finish_step, job.rid, job))
        self.joining.clear()
        chunk = None
        if self.local:
            head = self.local[0]
            chunk = (head.computed, min(head.computed + self.chunk_tokens, head.req.input_tokens))
        if self.batch == 0 and chunk is None:
            self.stepping = False
            return
        self.stepping = True
        seconds = self.hooks.gpu.decode_step_s(self.batch, self.context, chunk)
        self.hooks.loop.after(seconds, self._step_done, chunk)

    def _step_done(self, chunk: tuple[int, int] | None) -> None:
        self.steps += 1
        self.context += self.batch
        finishing = self._finishing
        while finishing and finishing[0][0] == self.steps:
            _, _, job = heapq.heappop(finishing)
            self.batch -= 1
            self.context -= job.ctx0 + self.steps
            self._finish(job)
        if chunk is not None:
            head = self.local[0]
            head.computed = chunk[1]
            if head.computed == head.req.input_tokens:
                self.local.popleft()
                self.cache.commit(head.rid)
                self.hooks.first_token(head)
                self._join(head)
        self._step()

    def _finish(self, job: Job) -> None:
        self.cache.free(job.rid)
        self.admitted -= 1
        self.hooks.finished(job)

    def load(self) -> WorkerLoad:
        free, total = self._kv_load()
        return WorkerLoad(
            num_waiting=self.admitted - self.batch,
            num_running=self.batch,
            prefill_tokens_waiting=sum(j.req.input_tokens - j.computed for j in self.local),
            free_kv_blocks=free,
            total_kv_blocks=total,
        )
