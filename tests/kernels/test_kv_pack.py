"""The Triton KV pack/unpack kernels (plain and FP8) against `kv_pack_ref`.

Runs on CUDA when present, else on CPU tensors under TRITON_INTERPRET=1 (conftest.py).
Every destination starts as NaN, so an element a kernel forgets to write fails the
comparison, and a write outside the listed blocks shows up as a changed NaN.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kvferry.kernels import kv_pack
from kvferry.kernels import kv_pack_ref as ref
from kvferry.kernels.kv_pack import _e4m3_decode, _e4m3_encode

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# NOTE: the interpreter truncates float32 -> bfloat16 (GPUs round to nearest): bf16 on GPU only.
DTYPES = [torch.float32, torch.float16, *([torch.bfloat16] if DEVICE.type == "cuda" else [])]
NUM_BLOCKS = 12

# (layers, block_size, kv heads, head_dim, block ids): out of order, not contiguous, a
# single block, a single head, odd (non power of two) block and head sizes.
CASES = [
    (3, 4, 2, 8, [7, 2, 9, 0]),
    (1, 4, 1, 16, [5]),
    (2, 3, 3, 6, [11, 4, 1]),
    (2, 16, 1, 8, [3, 10, 6, 8, 2]),
]


def caches(
    num_layers: int, block_size: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (2, NUM_BLOCKS, block_size, heads, head_dim)
    return [torch.randn(shape, generator=gen).to(dtype).to(DEVICE) for _ in range(num_layers)]


def poisoned_like(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.full_like(t, float("nan")) for t in tensors]


def ids(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=DEVICE)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values, NaN matching NaN (poison left in place on both sides)."""
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and bool(
        torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    )


def other_ids(block_ids: list[int]) -> list[int]:
    """Different, shuffled block ids for the receiving side."""
    return [(NUM_BLOCKS - 1 - b + 3) % NUM_BLOCKS for b in reversed(block_ids)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_pack_matches_reference_and_fills_out(
    case: tuple[int, int, int, int, list[int]], dtype: torch.dtype
) -> None:
    layers, bs, heads, dim, block_ids = case
    src = caches(layers, bs, heads, dim, dtype, seed=len(block_ids))
    out = torch.full((layers, 2, len(block_ids), bs, heads, dim), float("nan"), dtype=dtype)
    out = out.to(DEVICE)
    got = kv_pack.pack_kv_blocks(src, ids(block_ids), out=out)
    assert got is out
    expected = ref.pack_kv_blocks([c.cpu() for c in src], ids(block_ids).cpu())
    assert same(got.cpu(), expected)
    assert not torch.isnan(got).any()
    # block i of layer l is block block_ids[i] of that layer's cache (independent check)
    assert torch.equal(got[layers - 1, 1, 0].cpu(), src[-1][1, block_ids[0]].cpu())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_unpack_writes_exactly_the_listed_blocks(
    case: tuple[int, int, int, int, list[int]], dtype: torch.dtype
) -> None:
    layers, bs, heads, dim, block_ids = case
    src = caches(layers, bs, heads, dim, dtype, seed=7)
    packed = kv_pack.pack_kv_blocks(src, ids(block_ids))
    dest_ids = other_ids(block_ids)
    got, expected = poisoned_like(src), [t.cpu() for t in poisoned_like(src)]
    kv_pack.unpack_kv_blocks(packed, got, ids(dest_ids))
    ref.unpack_kv_blocks(packed.cpu(), expected, ids(dest_ids).cpu())
    for layer in range(layers):
        assert same(got[layer].cpu(), expected[layer])
        # round trip: the receiver's blocks hold the sender's, the rest is untouched
        assert torch.equal(got[layer][:, dest_ids], src[layer][:, block_ids])
        untouched = [b for b in range(NUM_BLOCKS) if b not in dest_ids]
        assert torch.isnan(got[layer][:, untouched]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_fp8_pack_matches_reference_bit_for_bit(
    case: tuple[int, int, int, int, list[int]], dtype: torch.dtype
) -> None:
    layers, bs, heads, dim, block_ids = case
    src = caches(layers, bs, heads, dim, dtype, seed=11)
    src[0][1, block_ids[-1], :, 0] = 0.0  # an all-zero (block, head) group: scale 1
    q, scales = kv_pack.pack_kv_blocks_fp8(src, ids(block_ids))
    q_ref, scales_ref = ref.pack_kv_blocks_fp8([c.cpu() for c in src], ids(block_ids).cpu())
    assert q.dtype == ref.FP8_DTYPE and scales.dtype == torch.float32
    assert torch.equal(scales.cpu(), scales_ref)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
    assert scales[0, 1, -1, 0] == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_fp8_round_trip_into_other_blocks(
    case: tuple[int, int, int, int, list[int]], dtype: torch.dtype
) -> None:
    layers, bs, heads, dim, block_ids = case
    src = caches(layers, bs, heads, dim, dtype, seed=13)
    q, scales = kv_pack.pack_kv_blocks_fp8(src, ids(block_ids))
    dest_ids = other_ids(block_ids)
    got, expected = poisoned_like(src), [t.cpu() for t in poisoned_like(src)]
    kv_pack.unpack_kv_blocks_fp8(q, scales, got, ids(dest_ids))
    ref.unpack_kv_blocks_fp8(q.cpu(), scales.cpu(), expected, ids(dest_ids).cpu())
    for layer in range(layers):
        assert same(got[layer].cpu(), expected[layer])
        untouched = [b for b in range(NUM_BLOCKS) if b not in dest_ids]
        assert torch.isnan(got[layer][:, untouched]).all()
        # e4m3 keeps 3 mantissa bits: error <= half a step, |x| / 16 for normal values,
        # 2^-10 * scale below e4m3's smallest normal; plus the cast to `dtype`.
        x = src[layer][:, block_ids].float()  # [2, n, BS, Hkv, D]
        y = got[layer][:, dest_ids].float()
        scale = scales[layer][:, :, None, :, None]  # [2, n, 1, Hkv, 1]
        bound = torch.maximum(x.abs() / 16, scale / 1024) * 1.01 + x.abs() * 2**-8
        assert bool(((x - y).abs() <= bound).all())


@triton.jit
def _codec_kernel(x_ptr, code_ptr, back_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    code = _e4m3_encode(tl.load(x_ptr + offs, mask=mask))
    tl.store(code_ptr + offs, code, mask=mask)
    tl.store(back_ptr + offs, _e4m3_decode(code), mask=mask)


def test_e4m3_bit_codec_rounds_like_torch_everywhere() -> None:
    # every finite e4m3 value, the midpoints between neighbours (ties), and one float32
    # step either side of each midpoint, both signs; plus random values over the range
    every = torch.arange(256, dtype=torch.uint8).view(ref.FP8_DTYPE).float()
    finite = every[~torch.isnan(every)].unique()  # sorted, -448..448
    mid = (finite[1:] + finite[:-1]) / 2
    probes = [finite, mid, mid.nextafter(mid + 1), mid.nextafter(mid - 1)]
    gen = torch.Generator().manual_seed(0)
    probes.append((torch.rand(4000, generator=gen) * 2 - 1) * ref.FP8_MAX)
    probes.append((torch.rand(1000, generator=gen) * 2 - 1) * 2**-6)  # subnormal range
    x = torch.cat(probes).clamp(-ref.FP8_MAX, ref.FP8_MAX).to(DEVICE)
    code = torch.empty(x.shape, dtype=torch.uint8, device=DEVICE)
    back = torch.empty_like(x)
    _codec_kernel[(triton.cdiv(x.numel(), 1024),)](x, code, back, x.numel(), BLOCK=1024)
    expected = x.cpu().to(ref.FP8_DTYPE)
    assert torch.equal(code.cpu(), expected.view(torch.uint8))
    assert torch.equal(back.cpu(), expected.float())


def test_empty_block_list() -> None:
    src = caches(2, 4, 1, 8, torch.float32, seed=0)
    assert kv_pack.pack_kv_blocks(src, ids([])).shape == (2, 2, 0, 4, 1, 8)
    q, scales = kv_pack.pack_kv_blocks_fp8(src, ids([]))
    assert q.shape == (2, 2, 0, 4, 1, 8) and scales.shape == (2, 2, 0, 1)


def test_bad_arguments_are_clear_errors() -> None:
    src = caches(2, 4, 1, 8, torch.float32, seed=0)
    packed = kv_pack.pack_kv_blocks(src, ids([1, 2]))
    with pytest.raises(ValueError, match=r"block ids must be in \[0, 12\)"):
        kv_pack.pack_kv_blocks(src, ids([3, 12]))
    with pytest.raises(ValueError, match="distinct"):
        kv_pack.unpack_kv_blocks(packed, src, ids([4, 4]))
    with pytest.raises(ValueError, match="packed KV has shape"):
        kv_pack.unpack_kv_blocks(packed, src, ids([4]))
    with pytest.raises(ValueError, match="same shape, dtype and device"):
        kv_pack.pack_kv_blocks([src[0], src[1].half()], ids([1]))
    with pytest.raises(ValueError, match="1-D int64"):
        kv_pack.pack_kv_blocks(src, ids([1]).int())
    with pytest.raises(ValueError, match="out must be"):
        kv_pack.pack_kv_blocks(src, ids([1]), out=packed)
    with pytest.raises(ValueError, match="contiguous"):
        kv_pack.pack_kv_blocks([c.transpose(1, 2) for c in src], ids([1]))
    q, scales = kv_pack.pack_kv_blocks_fp8(src, ids([1, 2]))
    with pytest.raises(ValueError, match="scales must be float32"):
        kv_pack.unpack_kv_blocks_fp8(q, scales[:, :, :1], src, ids([3, 4]))
