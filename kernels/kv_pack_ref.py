"""Gathering KV blocks into one transfer buffer and scattering them back, in plain torch:
the reference the Triton kernels (`kv_pack`) are tested against, and the CPU path.

Packed layout (the `KVSlab` / wire chunk layout): one contiguous tensor
`[L, 2, n, BS, Hkv, D]` for L layers (`kv_caches[0..L-1]`), K then V, and the n blocks in
`block_ids` order. Each cache is `[2, NB, BS, Hkv, D]` (see `attention_ref`).

FP8 (e4m3, `torch.float8_e4m3fn`): the same layout in one byte per element, plus float32
`scales [L, 2, n, Hkv]`: one per (layer, K/V, block, head), over that head's BS x D
elements. An element is `fp8 * scale`; `scale = amax / 448` (448 is e4m3's largest finite
value), or 1 where the group is all zeros. Values must be finite.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value."""


def pack_kv_blocks(
    kv_caches: list[torch.Tensor],  # L x [2, NB, BS, Hkv, D]
    block_ids: torch.Tensor,  # [n] int64
    out: torch.Tensor | None = None,  # [L, 2, n, BS, Hkv, D]
) -> torch.Tensor:  # [L, 2, n, BS, Hkv, D]
    """Copy blocks `block_ids` of every layer into one contiguous buffer (`out` if given)."""
    shape = packed_shape(kv_caches, block_ids)
    if out is None:
        out = torch.empty(shape, dtype=kv_caches[0].dtype, device=kv_caches[0].device)
    check_out(out, shape, kv_caches[0])
    for layer, cache in enumerate(kv_caches):
        torch.index_select(cache, 1, block_ids, out=out[layer])
    return out


def unpack_kv_blocks(
    packed: torch.Tensor,  # [L, 2, n, BS, Hkv, D]
    kv_caches: list[torch.Tensor],  # L x [2, NB, BS, Hkv, D]
    block_ids: torch.Tensor,  # [n] int64, distinct
) -> None:
    """Write packed block i of every layer to block `block_ids[i]` of that layer's cache."""
    check_packed(packed, packed_shape(kv_caches, block_ids))
    for layer, cache in enumerate(kv_caches):
        cache.index_copy_(1, block_ids, packed[layer].to(cache.dtype))


def quantize_fp8(
    packed: torch.Tensor,  # [L, 2, n, BS, Hkv, D]
) -> tuple[torch.Tensor, torch.Tensor]:  # fp8 [L, 2, n, BS, Hkv, D], fp32 [L, 2, n, Hkv]
    """FP8 values and the per-(layer, K/V, block, head) scales (module docstring)."""
    x = packed.float()
    amax = x.abs().amax(dim=(3, 5))  # [L, 2, n, Hkv]
    scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (x / scales[:, :, :, None, :, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scales


def dequantize_fp8(
    q: torch.Tensor,  # fp8 [L, 2, n, BS, Hkv, D]
    scales: torch.Tensor,  # fp32 [L, 2, n, Hkv]
    dtype: torch.dtype,
) -> torch.Tensor:  # [L, 2, n, BS, Hkv, D] of dtype
    out: torch.Tensor = (q.float() * scales[:, :, :, None, :, None]).to(dtype)
    return out


def pack_kv_blocks_fp8(
    kv_caches: list[torch.Tensor], block_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # fp8 [L, 2, n, BS, Hkv, D], fp32 [L, 2, n, Hkv]
    """`pack_kv_blocks`, quantized to FP8 with its scales."""
    return quantize_fp8(pack_kv_blocks(kv_caches, block_ids))


def unpack_kv_blocks_fp8(
    q: torch.Tensor,  # fp8 [L, 2, n, BS, Hkv, D]
    scales: torch.Tensor,  # fp32 [L, 2, n, Hkv]
    kv_caches: list[torch.Tensor],
    block_ids: torch.Tensor,  # [n] int64, distinct
) -> None:
    """Dequantize into each cache's dtype and scatter like `unpack_kv_blocks`."""
    check_scales(scales, q)
    unpack_kv_blocks(dequantize_fp8(q, scales, kv_caches[0].dtype), kv_caches, block_ids)


# -- argument checks shared with the Triton kernels ----------------------------------------
def packed_shape(kv_caches: list[torch.Tensor], block_ids: torch.Tensor) -> tuple[int, ...]:
    """[L, 2, n, BS, Hkv, D], after checking that the caches agree with each other."""
    if not kv_caches:
        raise ValueError("kv_caches is empty: pass one cache per layer of the range")
    first = kv_caches[0]
    if first.dim() != 5 or first.shape[0] != 2:
        raise ValueError(f"a KV cache is [2, NB, BS, Hkv, D]; got {tuple(first.shape)}")
    for cache in kv_caches[1:]:
        if cache.shape != first.shape or cache.dtype != first.dtype or cache.device != first.device:
            raise ValueError(
                "every layer's KV cache must have the same shape, dtype and device; got"
                f" {tuple(cache.shape)} {cache.dtype} {cache.device} next to"
                f" {tuple(first.shape)} {first.dtype} {first.device}"
            )
    if block_ids.dim() != 1 or block_ids.dtype != torch.int64:
        raise ValueError(
            f"block_ids must be a 1-D int64 tensor; got {block_ids.dtype} {tuple(block_ids.shape)}"
        )
    return (len(kv_caches), 2, block_ids.numel(), *first.shape[2:])


def check_out(out: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out must be {list(shape)} {like.dtype} on {like.device}; got"
            f" {list(out.shape)} {out.dtype} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous (it is the transfer buffer)")


def check_packed(packed: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(packed.shape) != shape:
        raise ValueError(
            f"packed KV has shape {list(packed.shape)}; the caches and block ids need {list(shape)}"
        )


def check_scales(scales: torch.Tensor, q: torch.Tensor) -> None:
    if q.dtype != FP8_DTYPE:
        raise ValueError(f"FP8 KV must be {FP8_DTYPE}; got {q.dtype}")
    shape = (*q.shape[:3], q.shape[4])
    if tuple(scales.shape) != shape or scales.dtype != torch.float32:
        raise ValueError(
            f"scales must be float32 {list(shape)} (layer, K/V, block, head); got"
            f" {scales.dtype} {list(scales.shape)}"
        )
