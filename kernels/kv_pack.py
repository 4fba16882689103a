"""Triton kernels that gather a request's KV blocks (a layer range) into one contiguous
transfer buffer and scatter them back, optionally through FP8 (e4m3) with a scale per
(layer, K/V, block, head). Layouts and semantics: `kv_pack_ref`, the torch reference.

One launch covers every layer of the range: the layers' caches are separate tensors, so
the kernels read their base addresses from a small int64 table (one entry per layer).

NOTE: the FP8 kernels encode and decode e4m3 bit patterns with integer arithmetic (round to
nearest even, exactly like torch's cast) instead of casting to Triton's fp8 type: the cast
needs compute capability 8.9+, and the Triton interpreter's rounds wrongly where rounding
carries into the exponent (1.94 -> 1.0). Memory-bound kernels do not notice the extra ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kv_pack_ref import (
    FP8_DTYPE,
    FP8_MAX,
    check_out,
    check_packed,
    check_scales,
    packed_shape,
)

_MAX_TILE = 4096
"""Elements one program copies: 8 KiB of bf16, enough for full-width vector loads."""
_FP8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def _copy_blocks_kernel(
    cache_ptrs,  # [L] int64: base address of each layer's cache
    packed_ptr,  # [L, 2, n, TILE]
    block_ids_ptr,  # [n] int64
    num_blocks_listed,  # n
    stride_kv,  # cache.stride(0), in elements
    TILE: tl.constexpr,  # BS * Hkv * D: one block of one of K/V, contiguous
    BLOCK: tl.constexpr,
    PACK: tl.constexpr,  # True: cache -> packed; False: packed -> cache
):
    i = tl.program_id(0).to(tl.int64)  # index into block_ids
    layer_kv = tl.program_id(1).to(tl.int64)  # layer * 2 + (0: K, 1: V)
    part = tl.program_id(2).to(tl.int64)
    layer = layer_kv // 2
    cache = tl.load(cache_ptrs + layer).to(tl.pointer_type(packed_ptr.dtype.element_ty))
    block = tl.load(block_ids_ptr + i)
    offs = part * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TILE
    cache_tile = cache + (layer_kv % 2) * stride_kv + block * TILE
    packed_tile = packed_ptr + (layer_kv * num_blocks_listed + i) * TILE
    if PACK:
        tl.store(packed_tile + offs, tl.load(cache_tile + offs, mask=mask), mask=mask)
    else:
        tl.store(cache_tile + offs, tl.load(packed_tile + offs, mask=mask), mask=mask)


@triton.jit
def _e4m3_encode(x):  # float32 in [-448, 448] -> uint8 e4m3 bit pattern
    bits = x.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    # Normal (|x| >= 2^-6): keep 3 mantissa bits, round to nearest even on the 20 dropped
    # bits; a carry rolls into the exponent. Rebias the exponent from 127 to 7.
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - (120 << 3)
    # Subnormal: the code is rint(|x| * 2^9), 0..8 (8 is the smallest normal's code); adding
    # 2^23 makes the float adder round to an integer, read back from the low bits.
    sub = (tl.abs(x) * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    return (tl.where(mag < 0x3C800000, sub, normal) | sign).to(tl.uint8)


@triton.jit
def _e4m3_decode(code):  # uint8 e4m3 bit pattern (never NaN: 0x7f/0xff) -> float32
    c = code.to(tl.int32)
    exponent = (c >> 3) & 0xF
    mantissa = c & 0x7
    normal = (((exponent + 120) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
    value = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal)  # m * 2^-9
    return (value.to(tl.int32, bitcast=True) | ((c & 0x80) << 24)).to(tl.float32, bitcast=True)


@triton.jit
def _fp8_blocks_kernel(
    cache_ptrs,  # [L] int64
    cache_ref_ptr,  # any layer's cache: gives the element type
    packed_ptr,  # uint8 (e4m3 bit patterns) [L, 2, n, BS, Hkv, D]
    scales_ptr,  # fp32 [L, 2, n, Hkv]
    block_ids_ptr,  # [n] int64
    num_blocks_listed,
    stride_kv,
    BS: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BLOCK_BS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PACK: tl.constexpr,  # True: quantize cache -> packed; False: dequantize packed -> cache
):
    i = tl.program_id(0).to(tl.int64)
    layer_kv = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2).to(tl.int64)
    cache = tl.load(cache_ptrs + layer_kv // 2).to(tl.pointer_type(cache_ref_ptr.dtype.element_ty))
    block = tl.load(block_ids_ptr + i)
    tok = tl.arange(0, BLOCK_BS)[:, None]
    dim = tl.arange(0, BLOCK_D)[None, :]
    mask = (tok < BS) & (dim < D)
    offs = tok * (HKV * D) + head * D + dim  # [BLOCK_BS, BLOCK_D]: one head of one block
    cache_tile = cache + (layer_kv % 2) * stride_kv + block * (BS * HKV * D)
    packed_tile = packed_ptr + (layer_kv * num_blocks_listed + i) * (BS * HKV * D)
    scale_ptr = scales_ptr + (layer_kv * num_blocks_listed + i) * HKV + head
    if PACK:
        x = tl.load(cache_tile + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
        # NOTE: div_rn (IEEE division) so values round exactly as the torch reference's.
        scale = tl.where(amax > 0, tl.math.div_rn(amax, _FP8_MAX), 1.0)
        q = tl.clamp(tl.math.div_rn(x, scale), -_FP8_MAX, _FP8_MAX)
        tl.store(packed_tile + offs, _e4m3_encode(q), mask=mask)
        tl.store(scale_ptr, scale)
    else:
        x = _e4m3_decode(tl.load(packed_tile + offs, mask=mask)) * tl.load(scale_ptr)
        tl.store(cache_tile + offs, x.to(cache_ref_ptr.dtype.element_ty), mask=mask)


def pack_kv_blocks(
    kv_caches: list[torch.Tensor],  # L x [2, NB, BS, Hkv, D], contiguous
    block_ids: torch.Tensor,  # [n] int64
    out: torch.Tensor | None = None,  # [L, 2, n, BS, Hkv, D], contiguous
) -> torch.Tensor:  # [L, 2, n, BS, Hkv, D]
    """Gather blocks `block_ids` of every layer into one buffer, in one launch."""
    shape = packed_shape(kv_caches, block_ids)
    if out is None:
        out = torch.empty(shape, dtype=kv_caches[0].dtype, device=kv_caches[0].device)
    check_out(out, shape, kv_caches[0])
    _copy(kv_caches, out, block_ids, pack=True)
    return out


def unpack_kv_blocks(
    packed: torch.Tensor,  # [L, 2, n, BS, Hkv, D]
    kv_caches: list[torch.Tensor],  # L x [2, NB, BS, Hkv, D], contiguous
    block_ids: torch.Tensor,  # [n] int64, distinct
) -> None:
    """Scatter packed block i of every layer to block `block_ids[i]`, in one launch."""
    check_packed(packed, packed_shape(kv_caches, block_ids))
    packed = packed.to(kv_caches[0].dtype).contiguous()
    _check_distinct(block_ids)
    _copy(kv_caches, packed, block_ids, pack=False)


def pack_kv_blocks_fp8(
    kv_caches: list[torch.Tensor], block_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # fp8 [L, 2, n, BS, Hkv, D], fp32 [L, 2, n, Hkv]
    """Gather and quantize in one launch (see `kv_pack_ref` for the scales)."""
    shape = packed_shape(kv_caches, block_ids)
    device = kv_caches[0].device
    q = torch.empty(shape, dtype=FP8_DTYPE, device=device)
    scales = torch.empty((*shape[:3], shape[4]), dtype=torch.float32, device=device)
    _fp8(kv_caches, q, scales, block_ids, pack=True)
    return q, scales


def unpack_kv_blocks_fp8(
    q: torch.Tensor,  # fp8 [L, 2, n, BS, Hkv, D]
    scales: torch.Tensor,  # fp32 [L, 2, n, Hkv]
    kv_caches: list[torch.Tensor],
    block_ids: torch.Tensor,  # [n] int64, distinct
) -> None:
    """Dequantize into each cache's dtype and scatter, in one launch."""
    check_packed(q, packed_shape(kv_caches, block_ids))
    check_scales(scales, q)
    _check_distinct(block_ids)
    _fp8(kv_caches, q.contiguous(), scales.contiguous(), block_ids, pack=False)


# -- launching -----------------------------------------------------------------------------
def _prepare(kv_caches: list[torch.Tensor], block_ids: torch.Tensor) -> torch.Tensor:
    """Validate what the kernels assume; the table of cache base addresses, on device."""
    device = kv_caches[0].device
    if not all(c.is_contiguous() for c in kv_caches):
        raise ValueError("the KV caches must be contiguous")
    if block_ids.device != device:
        raise ValueError(f"block_ids are on {block_ids.device}; the caches on {device}")
    num_blocks = kv_caches[0].shape[1]
    if block_ids.numel():
        low, high = (int(v) for v in torch.aminmax(block_ids))  # NOTE: one device sync
        if low < 0 or high >= num_blocks:
            raise ValueError(f"block ids must be in [0, {num_blocks}); got {low}..{high}")
    ptrs = torch.tensor([c.data_ptr() for c in kv_caches], dtype=torch.int64)
    return ptrs.to(device)


def _check_distinct(block_ids: torch.Tensor) -> None:
    if torch.unique(block_ids).numel() != block_ids.numel():
        raise ValueError("block ids to scatter into must be distinct")


def _copy(
    kv_caches: list[torch.Tensor], packed: torch.Tensor, block_ids: torch.Tensor, *, pack: bool
) -> None:
    ptrs = _prepare(kv_caches, block_ids)
    n = block_ids.numel()
    if n == 0:
        return
    tile = kv_caches[0][0, 0].numel()
    block = min(triton.next_power_of_2(tile), _MAX_TILE)
    grid = (n, 2 * len(kv_caches), triton.cdiv(tile, block))
    _copy_blocks_kernel[grid](
        ptrs, packed, block_ids, n, kv_caches[0].stride(0), TILE=tile, BLOCK=block, PACK=pack
    )


def _fp8(
    kv_caches: list[torch.Tensor],
    q: torch.Tensor,
    scales: torch.Tensor,
    block_ids: torch.Tensor,
    *,
    pack: bool,
) -> None:
    ptrs = _prepare(kv_caches, block_ids)
    n = block_ids.numel()
    if n == 0:
        return
    _, _, bs, hkv, d = kv_caches[0].shape
    grid = (n, 2 * len(kv_caches), hkv)
    _fp8_blocks_kernel[grid](
        ptrs,
        kv_caches[0],
        q.view(torch.uint8),
        scales,
        block_ids,
        n,
        kv_caches[0].stride(0),
        BS=bs,
        HKV=hkv,
        D=d,
        BLOCK_BS=triton.next_power_of_2(bs),
        BLOCK_D=triton.next_power_of_2(d),
        PACK=pack,
    )
