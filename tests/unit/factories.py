"""Small factories for engine-core unit tests: requests, KV managers, schedulers, a fake model.

Worlds are tiny on purpose (block size 4, a dozen blocks) so tests can pin exact block ids,
ref counts and free-queue order.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from kvferry.sampling_params import SamplingParams
from kvferry.services.engine.block_pool import BlockPool, KVBlock
from kvferry.services.engine.kv_cache_manager import KVCacheManager
from kvferry.services.engine.request import Request, RequestId
from kvferry.services.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

BLOCK_SIZE = 4
NUM_BLOCKS = 12
EOS = 2
"""The fake model's EOS id; `fake_next_token` never produces it on its own."""


def prompt_ids(rid: str, n: int) -> list[int]:
    """`n` token ids unique to `rid` (so unrelated requests never share a prefix block)."""
    base = 1000 + (zlib.crc32(rid.encode()) % 10_000) * 1000
    return [base + i for i in range(n)]


def make_params(**kwargs: Any) -> SamplingParams:
    kwargs.setdefault("max_tokens", 4)
    kwargs.setdefault("temperature", 0.0)
    return SamplingParams(**kwargs)


def make_request(
    rid: str,
    prompt: int | Sequence[int] = 6,
    *,
    arrival: int = 0,
    eos_token_ids: tuple[int, ...] = (EOS,),
    **params: Any,
) -> Request:
    """A request whose prompt is `prompt` ids, or `prompt` tokens unique to `rid`."""
    ids = prompt_ids(rid, prompt) if isinstance(prompt, int) else list(prompt)
    return Request(
        request_id=RequestId(rid),
        prompt_token_ids=ids,
        params=make_params(**params),
        eos_token_ids=eos_token_ids,
        arrival=arrival,
    )


def make_pool(num_blocks: int = NUM_BLOCKS, **kwargs: bool) -> BlockPool:
    return BlockPool(num_blocks, **kwargs)


def ids(blocks: Sequence[KVBlock]) -> list[int]:
    return [b.block_id for b in blocks]


def make_kv(
    num_blocks: int = NUM_BLOCKS, block_size: int = BLOCK_SIZE, *, enable_caching: bool = True
) -> KVCacheManager:
    return KVCacheManager(num_blocks, block_size, enable_caching=enable_caching)


def fake_next_token(context: Sequence[int]) -> int:
    """A deterministic "model": the next token is a function of the whole context.

    Values lie in [10, 60), so they never hit EOS or the prompt ids by accident.
    """
    return 10 + sum((i + 1) * t for i, t in enumerate(context)) % 50


class FakeModel:
    """Writes scheduled tokens into a paged "KV cache" and samples from what it reads back.

    The context a request attends to is read from its block table, so a wrong prefix-cache
    hit or a block handed to two requests shows up as a mismatch (and as different tokens).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.slots: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]

    def run(self, out: SchedulerOutput, requests: dict[RequestId, Request]) -> dict[RequestId, int]:
        bs = self.block_size
        # NOTE: every write lands before any read, as every layer of a real step does.
        for item in out.scheduled:
            for i, token in enumerate(item.token_ids):
                pos = item.start_position + i
                self.slots[item.block_ids[pos // bs]][pos % bs] = token
        sampled: dict[RequestId, int] = {}
        for item in out.scheduled:
            end = item.start_position + len(item.token_ids)
            context = [self.slots[item.block_ids[p // bs]][p % bs] for p in range(end)]
            expected = requests[item.request_id].all_token_ids[:end]
            if context != expected:
                raise AssertionError(f"{item.request_id}: KV holds {context}, want {expected}")
            if item.sample:
                sampled[item.request_id] = fake_next_token(expected)
        return sampled


class World:
    """A scheduler over a tiny KV pool, driven the way the engine drives it."""

    def __init__(
        self,
        num_blocks: int = NUM_BLOCKS,
        block_size: int = BLOCK_SIZE,
        *,
        enable_caching: bool = True,
        **config: Any,
    ) -> None:
        config.setdefault("max_num_batched_tokens", 64)
        config.setdefault("max_model_len", 64)
        self.kv = make_kv(num_blocks, block_size, enable_caching=enable_caching)
        self.pool = self.kv.pool
        self.scheduler = Scheduler(SchedulerConfig(**config), self.kv)
        self.model = FakeModel(num_blocks, block_size)
        self.all: dict[RequestId, Request] = {}
        self._arrivals = 0

    def add(self, rid: str, prompt: int | Sequence[int] = 6, **params: Any) -> Request:
        request = make_request(rid, prompt, arrival=self._arrivals, **params)
        self._arrivals += 1
        self.scheduler.add_request(request)
        self.all[request.request_id] = request
        return request

    def step(self, overrides: dict[str, int] | None = None) -> SchedulerOutput:
        """One engine step; `overrides` replaces the fake model's token for some requests."""
        out = self.scheduler.schedule()
        sampled = self.model.run(out, self.all)
        for rid, token in (overrides or {}).items():
            if RequestId(rid) in sampled:
                sampled[RequestId(rid)] = token
        self.scheduler.update(out, sampled)
        self.pool.check_invariants()
        return out

    def run(self, max_steps: int = 200) -> list[SchedulerOutput]:
        """Step until every request has finished; fails if that takes over `max_steps`."""
        outs: list[SchedulerOutput] = []
        while self.scheduler.num_unfinished:
            if len(outs) >= max_steps:
                raise AssertionError(f"requests still unfinished after {max_steps} steps")
            out = self.step()
            if out.is_empty:
                raise AssertionError("scheduler made no progress with requests pending")
            outs.append(out)
        return outs

    def outputs(self) -> dict[str, list[int]]:
        return {rid: r.output_token_ids for rid, r in self.all.items()}


def scheduled_tokens(out: SchedulerOutput) -> dict[str, int]:
    """request id -> number of tokens scheduled in this step."""
    return {item.request_id: len(item.token_ids) for item in out.scheduled}


def reference_output(prompt: Sequence[int], max_tokens: int) -> list[int]:
    """What the fake model generates for `prompt` alone, with no cache and no preemption."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(fake_next_token(tokens))
    return tokens[len(prompt) :]
