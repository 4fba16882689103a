"""The Triton paged decode kernel against `attention_ref.paged_decode_attention`.

Runs on CUDA when present, else on CPU tensors under TRITON_INTERPRET=1 (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from kvferry.kernels import attention_ref
from kvferry.kernels.paged_decode_attention import choose_num_splits, paged_decode_attention
from tests.kernels.paged_world import DEVICE, PagedWorld, padded_tables, tolerance

DTYPES = [torch.float32, torch.float16]


def run_case(
    *,
    lengths: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int = 16,
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    table_dtype: torch.dtype = torch.int64,
    seed: int = 0,
) -> None:
    world = PagedWorld(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        num_blocks=sum(-(-n // block_size) for n in lengths) + 3,
        dtype=dtype,
        seed=seed,
    )
    tables = [world.add_sequence(n) for n in lengths]
    block_tables = padded_tables(tables, table_dtype, extra=1)
    context_lens = torch.tensor(lengths, dtype=table_dtype, device=DEVICE)
    query = world.randn(len(lengths), num_heads, head_dim)
    scale = head_dim**-0.5
    out = torch.full_like(query, float("nan"))

    result = paged_decode_attention(
        query,
        world.cache,
        block_tables,
        context_lens,
        scale,
        sliding_window=sliding_window,
        out=out,
        num_splits=num_splits,
    )

    expected = attention_ref.paged_decode_attention(
        query.float(),
        world.cache.float(),
        block_tables.long(),
        context_lens.long(),
        scale,
        sliding_window=sliding_window,
    )
    assert result.data_ptr() == out.data_ptr()
    assert not out.isnan().any(), "an output element was not written or read a foreign slot"
    torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads"), [(4, 1), (8, 2), (4, 4)], ids=["one-kv-head", "gqa", "mha"]
)
def test_matches_reference(dtype: torch.dtype, num_heads: int, num_kv_heads: int) -> None:
    # 1: a single token; 5, 37: not block multiples; 16: exactly four blocks.
    run_case(lengths=[1, 5, 16, 37], num_heads=num_heads, num_kv_heads=num_kv_heads, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3, 7])
def test_context_splits_merge_exactly(dtype: torch.dtype, num_splits: int) -> None:
    # 150 tokens in 64-token tiles: 7 splits leave some splits empty for the short sequences.
    run_case(
        lengths=[150, 1, 70, 9],
        num_heads=4,
        num_kv_heads=2,
        dtype=dtype,
        num_splits=num_splits,
        seed=1,
    )


@pytest.mark.parametrize("sliding_window", [1, 6, 100])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_sliding_window(sliding_window: int, num_splits: int) -> None:
    run_case(
        lengths=[1, 13, 90],
        num_heads=4,
        num_kv_heads=2,
        sliding_window=sliding_window,
        num_splits=num_splits,
        seed=2,
    )


def test_int32_tables_block_16_and_non_power_of_two_head_dim() -> None:
    run_case(
        lengths=[3, 16, 17, 40],
        num_heads=6,
        num_kv_heads=2,
        head_dim=24,
        block_size=16,
        table_dtype=torch.int32,
        num_splits=2,
        seed=3,
    )


def test_writes_only_its_rows_of_a_larger_output() -> None:
    world = PagedWorld(
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        block_size=4,
        num_blocks=8,
        dtype=torch.float32,
        seed=4,
    )
    table = world.add_sequence(10)
    query = world.randn(1, 4, 16)
    big = torch.full((3, 4, 16), float("nan"), device=DEVICE)  # rows 0 and 2 are not ours
    paged_decode_attention(
        query,
        world.cache,
        padded_tables([table], torch.int64),
        torch.tensor([10], device=DEVICE),
        0.25,
        out=big[1:2],
    )
    assert not big[1].isnan().any()
    assert big[0].isnan().all() and big[2].isnan().all()


def test_empty_batch() -> None:
    cache = torch.zeros(2, 4, 4, 1, 16, device=DEVICE)
    query = torch.zeros(0, 2, 16, device=DEVICE)
    tables = torch.zeros(0, 1, dtype=torch.long, device=DEVICE)
    lens = torch.zeros(0, dtype=torch.long, device=DEVICE)
    out = paged_decode_attention(query, cache, tables, lens, 1.0)
    assert out.shape == (0, 2, 16)


def test_bad_shapes_raise() -> None:
    cache = torch.zeros(2, 4, 4, 3, 16, device=DEVICE)
    tables = torch.zeros(1, 1, dtype=torch.long, device=DEVICE)
    lens = torch.ones(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_decode_attention(torch.zeros(1, 4, 16, device=DEVICE), cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(
            torch.zeros(2, 3, 16, device=DEVICE), cache, tables, lens.repeat(2), 1.0
        )
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(
            torch.zeros(1, 3, 16, device=DEVICE), cache, tables, lens, 1.0, num_splits=0
        )


def test_num_splits_depend_on_shapes_only() -> None:
    cpu = torch.device("cpu")
    assert choose_num_splits(1, 1, 100, cpu) == 1  # too short to split
    assert choose_num_splits(1, 1, 100_000, cpu) == 8  # 2 x (4 pretend SMs) programs
    assert choose_num_splits(64, 8, 100_000, cpu) == 1  # the batch fills the device
