"""The Triton varlen paged prefill kernel against `attention_ref.paged_prefill_attention`,
span by span, with every span of a step in one launch.

Runs on CUDA when present, else on CPU tensors under TRITON_INTERPRET=1 (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from kvferry.kernels import attention_ref
from kvferry.kernels.paged_prefill_attention import paged_prefill_attention
from tests.kernels.paged_world import DEVICE, PagedWorld, padded_tables, tolerance

DTYPES = [torch.float32, torch.float16]
LEADING_ROWS = 2  # rows before the first span (decode tokens in the engine): never written


def run_case(
    *,
    spans: list[tuple[int, int]],  # (query_len, context_len): the newest query_len tokens
    num_heads: int,
    num_kv_heads: int,
    head_dim: int = 16,
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    sliding_window: int | None = None,
    table_dtype: torch.dtype = torch.int64,
    seed: int = 0,
) -> None:
    world = PagedWorld(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        num_blocks=sum(-(-ctx // block_size) for _, ctx in spans) + 3,
        dtype=dtype,
        seed=seed,
    )
    tables = [world.add_sequence(ctx) for _, ctx in spans]
    starts = [LEADING_ROWS]
    for q_len, _ in spans:
        starts.append(starts[-1] + q_len)
    query = world.randn(starts[-1] + 1, num_heads, head_dim)  # and one trailing row
    out = torch.full_like(query, float("nan"))
    scale = head_dim**-0.5

    paged_prefill_attention(
        query,
        world.cache,
        padded_tables(tables, table_dtype, extra=1),
        torch.tensor(starts, dtype=table_dtype, device=DEVICE),
        torch.tensor([ctx for _, ctx in spans], dtype=table_dtype, device=DEVICE),
        max(q for q, _ in spans),
        scale,
        sliding_window=sliding_window,
        out=out,
    )

    for i, (_, ctx) in enumerate(spans):
        rows = slice(starts[i], starts[i + 1])
        expected = attention_ref.paged_prefill_attention(
            query[rows].float(),
            world.cache.float(),
            torch.tensor(tables[i], device=DEVICE),
            ctx,
            scale,
            sliding_window=sliding_window,
        )
        assert not out[rows].isnan().any(), f"span {i}: unwritten or foreign-slot output"
        torch.testing.assert_close(out[rows].float(), expected, **tolerance(dtype))
    assert out[:LEADING_ROWS].isnan().all() and out[starts[-1] :].isnan().all()


# (query_len, context_len) per span, all in one launch:
MIXED_SPANS = [
    (1, 1),  # a one-token prompt
    (7, 7),  # a whole prompt, not a block multiple
    (3, 21),  # a chunk after 18 cached tokens (prefix hit or earlier chunk)
    (1, 9),  # the last token of a prompt after a prefix hit
    (70, 70),  # two query tiles, one unmasked key tile
    (66, 150),  # two query tiles over a long cached prefix
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads"), [(4, 1), (8, 2), (4, 4)], ids=["one-kv-head", "gqa", "mha"]
)
def test_mixed_spans_match_reference(dtype: torch.dtype, num_heads: int, num_kv_heads: int) -> None:
    run_case(spans=MIXED_SPANS, num_heads=num_heads, num_kv_heads=num_kv_heads, dtype=dtype)


@pytest.mark.parametrize("sliding_window", [1, 5, 64])
def test_sliding_window(sliding_window: int) -> None:
    run_case(
        spans=[(9, 9), (4, 30), (70, 130)],
        num_heads=4,
        num_kv_heads=2,
        sliding_window=sliding_window,
        seed=1,
    )


@pytest.mark.parametrize("sliding_window", [None, 40])
def test_long_span_with_short_ones(sliding_window: int | None) -> None:
    # A span of >= 128 tokens switches every span of the launch to 128-row query tiles.
    run_case(
        spans=[(130, 200), (1, 1), (5, 40)],
        num_heads=4,
        num_kv_heads=2,
        sliding_window=sliding_window,
        seed=3,
    )


def test_int32_metadata_block_16_and_non_power_of_two_head_dim() -> None:
    run_case(
        spans=[(17, 17), (5, 40)],
        num_heads=6,
        num_kv_heads=3,
        head_dim=24,
        block_size=16,
        table_dtype=torch.int32,
        seed=2,
    )


def test_bad_metadata_raises() -> None:
    cache = torch.zeros(2, 4, 4, 2, 16, device=DEVICE)
    query = torch.zeros(5, 4, 16, device=DEVICE)
    tables = torch.zeros(1, 2, dtype=torch.long, device=DEVICE)
    lens = torch.tensor([5], device=DEVICE)
    with pytest.raises(ValueError, match="query_starts"):
        paged_prefill_attention(query, cache, tables, lens, lens, 5, 1.0)
    with pytest.raises(ValueError, match="float16"):
        paged_prefill_attention(
            query.half(), cache, tables, torch.tensor([0, 5], device=DEVICE), lens, 5, 1.0
        )
