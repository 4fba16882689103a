"""The torch paged-attention references against a naive dense float64 implementation.

Every cache slot no sequence owns is NaN (including the unwritten tail of each sequence's
last block), and padding in block tables points at an all-NaN block, so any read of a wrong
slot that leaks into the result fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from kvferry.kernels.attention_ref import (
    paged_decode_attention,
    paged_prefill_attention,
    write_kv_cache,
)
from kvferry.services.engine.attention import (
    AttentionBackend,
    AttentionMetadata,
    PrefillSpan,
    attention_forward,
)

NUM_BLOCKS = 48
BLOCK_SIZE = 4
HEAD_DIM = 8
SCALE = HEAD_DIM**-0.5


class PagedWorld:
    """A NaN-poisoned cache with sequences scattered over shuffled blocks (never block 0)."""

    def __init__(self, num_heads: int, num_kv_heads: int, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        shape = (2, NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, HEAD_DIM)
        self.cache = torch.full(shape, float("nan"))
        self.free = (torch.randperm(NUM_BLOCKS - 1, generator=self.gen) + 1).tolist()

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def add_sequence(self, length: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Write `length` random K/V tokens; return (keys, values, block table)."""
        table = [self.free.pop() for _ in range(-(-length // BLOCK_SIZE))]
        key = self.randn(length, self.num_kv_heads, HEAD_DIM)
        value = self.randn(length, self.num_kv_heads, HEAD_DIM)
        write_kv_cache(key, value, self.cache, slots(table, 0, length))
        return key, value, table


def slots(table: list[int], start: int, end: int) -> torch.Tensor:
    return torch.tensor(
        [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(start, end)],
        dtype=torch.long,
    )


def naive_attention(
    query: torch.Tensor,  # [Tq, H, D], the last Tq positions of the sequence
    key: torch.Tensor,  # [ctx, Hkv, D]
    value: torch.Tensor,  # [ctx, Hkv, D]
    sliding_window: int | None = None,
) -> torch.Tensor:  # [Tq, H, D]
    num_tokens, num_heads, _ = query.shape
    context = key.shape[0]
    group = num_heads // key.shape[1]
    out = torch.empty(num_tokens, num_heads, HEAD_DIM, dtype=torch.float64)
    for i in range(num_tokens):
        pos = context - num_tokens + i
        lo = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
        for h in range(num_heads):
            k = key[lo : pos + 1, h // group].double()  # [n, D]
            v = value[lo : pos + 1, h // group].double()
            weights = torch.softmax(k @ query[i, h].double() * SCALE, dim=0)  # [n]
            out[i, h] = weights @ v
    return out.to(query.dtype)


def pad(tables: list[list[int]]) -> torch.Tensor:
    width = max(len(t) for t in tables) + 1  # one extra column of padding for everyone
    return torch.tensor([t + [0] * (width - len(t)) for t in tables])


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 2), (4, 1), (2, 2)])
@pytest.mark.parametrize("sliding_window", [None, 5])
def test_decode_matches_naive(
    num_heads: int, num_kv_heads: int, sliding_window: int | None
) -> None:
    world = PagedWorld(num_heads, num_kv_heads)
    lengths = [1, 3, 4, 5, 13, 8]
    seqs = [world.add_sequence(n) for n in lengths]
    query = world.randn(len(lengths), num_heads, HEAD_DIM)

    out = paged_decode_attention(
        query,
        world.cache,
        pad([table for _, _, table in seqs]),
        torch.tensor(lengths),
        SCALE,
        sliding_window=sliding_window,
    )

    for b, (key, value, _) in enumerate(seqs):
        expected = naive_attention(query[b : b + 1], key, value, sliding_window)
        torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("context_len", "query_len"), [(1, 1), (7, 7), (11, 4), (12, 1), (9, 8), (16, 16)]
)
@pytest.mark.parametrize("sliding_window", [None, 3])
def test_prefill_matches_naive(
    context_len: int, query_len: int, sliding_window: int | None
) -> None:
    world = PagedWorld(num_heads=4, num_kv_heads=2)
    world.add_sequence(10)  # a neighbour whose blocks must not be read
    key, value, table = world.add_sequence(context_len)
    query = world.randn(query_len, 4, HEAD_DIM)

    out = paged_prefill_attention(
        query, world.cache, torch.tensor(table), context_len, SCALE, sliding_window=sliding_window
    )

    torch.testing.assert_close(
        out, naive_attention(query, key, value, sliding_window), rtol=1e-5, atol=1e-5
    )


def test_decode_keeps_query_dtype() -> None:
    world = PagedWorld(num_heads=4, num_kv_heads=2)
    _, _, table = world.add_sequence(6)
    cache = world.cache.nan_to_num(0.0).bfloat16()
    query = world.randn(1, 4, HEAD_DIM).bfloat16()
    out = paged_decode_attention(query, cache, pad([table]), torch.tensor([6]), SCALE)
    assert out.dtype == torch.bfloat16
    assert out.shape == (1, 4, HEAD_DIM)


def test_write_kv_cache_touches_only_its_slots() -> None:
    world = PagedWorld(num_heads=2, num_kv_heads=2)
    key, value, table = world.add_sequence(6)
    written = torch.zeros(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool)
    written[slots(table, 0, 6)] = True
    flat = world.cache.view(2, NUM_BLOCKS * BLOCK_SIZE, 2, HEAD_DIM)

    assert flat[:, ~written].isnan().all()
    torch.testing.assert_close(flat[0, slots(table, 0, 6)], key, rtol=0, atol=0)
    torch.testing.assert_close(flat[1, slots(table, 0, 6)], value, rtol=0, atol=0)


def test_attention_forward_mixed_batch() -> None:
    """Two decodes, then a fresh prefill and a chunk after a cached prefix, in one step."""
    world = PagedWorld(num_heads=4, num_kv_heads=2)
    # (context after this step, new tokens this step); K/V of the new tokens come in `key`.
    plan = [(6, 1), (9, 1), (5, 5), (14, 6)]
    seqs = [world.add_sequence(ctx - new) for ctx, new in plan]
    tables = [table + [world.free.pop() for _ in range(4)] for _, _, table in seqs]
    new_k = [world.randn(new, 2, HEAD_DIM) for _, new in plan]
    new_v = [world.randn(new, 2, HEAD_DIM) for _, new in plan]
    query = world.randn(sum(new for _, new in plan), 4, HEAD_DIM)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(
            [slots(t, c - n, c) for t, (c, n) in zip(tables, plan, strict=True)]
        ),
        num_decode_tokens=2,
        decode_block_tables=pad(tables[:2]),
        decode_context_lens=torch.tensor([6, 9]),
        prefills=[
            PrefillSpan(
                query_start=2, query_len=5, context_len=5, block_table=torch.tensor(tables[2])
            ),
            PrefillSpan(
                query_start=7, query_len=6, context_len=14, block_table=torch.tensor(tables[3])
            ),
        ],
    )

    out = attention_forward(
        AttentionBackend.TORCH, query, torch.cat(new_k), torch.cat(new_v), world.cache, meta, SCALE
    )

    start = 0
    for (key, value, _), k, v, (_, new) in zip(seqs, new_k, new_v, plan, strict=True):
        expected = naive_attention(
            query[start : start + new], torch.cat([key, k]), torch.cat([value, v])
        )
        torch.testing.assert_close(out[start : start + new], expected, rtol=1e-5, atol=1e-5)
        start += new
