"""Triton kernels that store the step's K/V in the paged cache by slot, one with RoPE fused.

`write_kv_cache` has `attention_ref.write_kv_cache`'s semantics; `rope_and_write_kv_cache`
has `rope_ref.rope_and_write_kv_cache`'s. One program handles one token: it reads the
token's slot once and writes all of its KV heads (and, fused, rotates its query heads).

NOTE: a negative slot skips the token (padding rows of a fixed-size, CUDA-graph batch);
the torch reference rejects it.

NOTE (rounding): the fused rotation rounds `x * cos` and `rotate_half(x) * sin` to the
activation dtype before adding them, as torch's separate ops do, so bf16/fp16 results match
the reference bit for bit (float32 may differ in the last bit where the compiler fuses a
multiply-add).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [T, Hkv, D], heads x dim contiguous per token
    value_ptr,
    cache_ptr,  # [2, NB * BS, Hkv * D]
    slot_ptr,  # [T] int64
    stride_key,  # key.stride(0)
    stride_value,
    stride_kv,  # kv_cache.stride(0)
    ROW: tl.constexpr,  # Hkv * D
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        mask = offs < ROW
        out_ty = cache_ptr.dtype.element_ty
        k = tl.load(key_ptr + token * stride_key + offs, mask=mask)
        v = tl.load(value_ptr + token * stride_value + offs, mask=mask)
        tl.store(cache_ptr + slot * ROW + offs, k.to(out_ty), mask=mask)
        tl.store(cache_ptr + stride_kv + slot * ROW + offs, v.to(out_ty), mask=mask)


@triton.jit
def _rotate(
    x_ptr, heads, cos_lo, cos_hi, sin_lo, sin_hi, BLOCK_H: tl.constexpr, HALF: tl.constexpr
):
    """Load [heads, D] at x_ptr (rows D apart) and rotate; returns the two halves, rounded
    to x's dtype."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < heads
    ty = x_ptr.dtype.element_ty
    lo = tl.load(x_ptr + h * (2 * HALF) + d, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(x_ptr + h * (2 * HALF) + HALF + d, mask=mask, other=0.0).to(tl.float32)
    # HF: out = x * cos + cat(-hi, lo) * sin. Like torch's ops on bf16/fp16: each product
    # and the sum computed in float32 and rounded to the dtype (see the module NOTE).
    out_lo = (lo * cos_lo).to(ty).to(tl.float32) - (hi * sin_lo).to(ty).to(tl.float32)
    out_hi = (hi * cos_hi).to(ty).to(tl.float32) + (lo * sin_hi).to(ty).to(tl.float32)
    return out_lo.to(ty), out_hi.to(ty)


@triton.jit
def _rope_write_kv_kernel(
    query_ptr,  # [T, H, D], heads x dim contiguous per token
    key_ptr,  # [T, Hkv, D]
    value_ptr,  # [T, Hkv, D]
    query_out_ptr,  # [T, H, D] contiguous
    positions_ptr,  # [T] int64
    cos_ptr,  # [max_pos, D] contiguous
    sin_ptr,
    cache_ptr,  # [2, NB * BS, Hkv * D]
    slot_ptr,  # [T] int64
    stride_query,
    stride_key,
    stride_value,
    stride_kv,
    H: tl.constexpr,
    HKV: tl.constexpr,
    HALF: tl.constexpr,  # D / 2, a power of two
    BLOCK_H: tl.constexpr,  # next power of two >= H
    BLOCK_HKV: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token)
    d = tl.arange(0, HALF)[None, :]
    # the tables in the activation dtype (as the model keeps them), as float32 operands
    ty = query_ptr.dtype.element_ty
    cos_lo = tl.load(cos_ptr + pos * (2 * HALF) + d).to(ty).to(tl.float32)
    cos_hi = tl.load(cos_ptr + pos * (2 * HALF) + HALF + d).to(ty).to(tl.float32)
    sin_lo = tl.load(sin_ptr + pos * (2 * HALF) + d).to(ty).to(tl.float32)
    sin_hi = tl.load(sin_ptr + pos * (2 * HALF) + HALF + d).to(ty).to(tl.float32)

    q_lo, q_hi = _rotate(
        query_ptr + token * stride_query, H, cos_lo, cos_hi, sin_lo, sin_hi, BLOCK_H, HALF
    )
    h = tl.arange(0, BLOCK_H)[:, None]
    q_out = query_out_ptr + token * (H * 2 * HALF) + h * (2 * HALF) + d
    tl.store(q_out, q_lo, mask=h < H)
    tl.store(q_out + HALF, q_hi, mask=h < H)

    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        k_lo, k_hi = _rotate(
            key_ptr + token * stride_key, HKV, cos_lo, cos_hi, sin_lo, sin_hi, BLOCK_HKV, HALF
        )
        hk = tl.arange(0, BLOCK_HKV)[:, None]
        kv_mask = hk < HKV
        out_ty = cache_ptr.dtype.element_ty
        row = cache_ptr + slot * (HKV * 2 * HALF) + hk * (2 * HALF) + d
        tl.store(row, k_lo.to(out_ty), mask=kv_mask)
        tl.store(row + HALF, k_hi.to(out_ty), mask=kv_mask)
        v_row = value_ptr + token * stride_value + hk * (2 * HALF) + d
        v_lo = tl.load(v_row, mask=kv_mask)
        v_hi = tl.load(v_row + HALF, mask=kv_mask)
        tl.store(row + stride_kv, v_lo.to(out_ty), mask=kv_mask)
        tl.store(row + stride_kv + HALF, v_hi.to(out_ty), mask=kv_mask)


def write_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D], contiguous
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    """Store each token's K and V at its flat slot, in place (negative slot: skipped)."""
    num_tokens = _check(key, value, kv_cache, slot_mapping)
    if num_tokens == 0:
        return
    key, value = _rows_contiguous(key), _rows_contiguous(value)
    row = key.shape[1] * key.shape[2]
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        kv_cache,
        slot_mapping,
        key.stride(0),
        value.stride(0),
        kv_cache.stride(0),
        ROW=row,
        BLOCK=triton.next_power_of_2(row),
    )


def rope_and_write_kv_cache(
    query: torch.Tensor,  # [T, H, D]
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    positions: torch.Tensor,  # [T] int64
    cos_cache: torch.Tensor,  # [max_pos, D], the activation dtype
    sin_cache: torch.Tensor,  # [max_pos, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D], contiguous
    slot_mapping: torch.Tensor,  # [T] int64
    out: torch.Tensor | None = None,  # [T, H, D] contiguous, for the rotated query
) -> torch.Tensor:  # [T, H, D]: the rotated query (`out` when given)
    """Rotate query and key (HF `rotate_half` RoPE), write the rotated key and the value at
    each token's slot, return the rotated query: one launch instead of ~10 torch ops."""
    num_tokens = _check(key, value, kv_cache, slot_mapping)
    num_heads, head_dim = query.shape[1], query.shape[2]
    if query.shape[0] != num_tokens or head_dim != key.shape[2] or query.dtype != key.dtype:
        raise ValueError(
            f"query {query.dtype} {list(query.shape)} does not match key {key.dtype}"
            f" {list(key.shape)}"
        )
    half = head_dim // 2
    if head_dim % 2 or half & (half - 1):
        raise ValueError(f"fused RoPE needs head_dim = 2 * a power of two; got {head_dim}")
    for name, table in (("cos_cache", cos_cache), ("sin_cache", sin_cache)):
        if table.dim() != 2 or table.shape[1] != head_dim or not table.is_contiguous():
            raise ValueError(f"{name} must be contiguous [max_pos, {head_dim}]")
    if positions.shape != (num_tokens,) or positions.dtype != torch.int64:
        raise ValueError(f"positions must be int64 [{num_tokens}]")
    query, key, value = (_rows_contiguous(t) for t in (query, key, value))
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {query.dtype} {list(query.shape)}")
    if num_tokens == 0:
        return out
    _rope_write_kv_kernel[(num_tokens,)](
        query,
        key,
        value,
        out,
        positions,
        cos_cache,
        sin_cache,
        kv_cache,
        slot_mapping,
        query.stride(0),
        key.stride(0),
        value.stride(0),
        kv_cache.stride(0),
        H=num_heads,
        HKV=key.shape[1],
        HALF=half,
        BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_HKV=triton.next_power_of_2(key.shape[1]),
    )
    return out


def _check(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> int:
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be contiguous [2, NB, BS, Hkv, D]; got {kv_cache.shape}")
    row = tuple(kv_cache.shape[3:])
    if key.dim() != 3 or tuple(key.shape[1:]) != row or key.shape != value.shape:
        raise ValueError(
            f"key {list(key.shape)} and value {list(value.shape)} must be [T, {row[0]}, {row[1]}]"
        )
    if slot_mapping.shape != (key.shape[0],) or slot_mapping.dtype != torch.int64:
        raise ValueError(f"slot_mapping must be int64 [{key.shape[0]}]")
    return int(key.shape[0])


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with each token's [heads, D] contiguous (a q/k/v split of a fused projection
    already is: only the token stride differs)."""
    if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.contiguous()
