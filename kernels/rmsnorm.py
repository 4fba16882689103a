"""Triton RMSNorm, alone and fused with the residual add (`rmsnorm_ref` is the reference).

One program normalises one row. The fused variant reads x and the residual once, writes
their sum (the next residual) and its norm: one pass over the row instead of torch's add,
pow, mean, rsqrt, mul, cast and mul.

NOTE (rounding): the sum is rounded to the dtype before it is normalised, and the
normalised row to the dtype before the weight multiplies it, exactly as the reference's
separate ops do; the sum of squares is accumulated in a different order (and rsqrt may be
an approximation on GPU), so results agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_FUSED_N = 65536
"""Widest row handled in registers by one program (Llama hidden sizes are <= 16384)."""


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [M, N], row stride stride_x
    residual_ptr,  # [M, N], row stride stride_r (read when ADD_RESIDUAL)
    sum_ptr,  # [M, N] contiguous: x + residual (written when ADD_RESIDUAL)
    weight_ptr,  # [N]
    out_ptr,  # [M, N] contiguous
    stride_x,
    stride_r,
    N,
    eps,
    BLOCK: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    ty = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(ty)  # rounded, as torch's add
        tl.store(sum_ptr + row * N + offs, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_sq = tl.sum(x32 * x32, axis=0) / N
    normed = (x32 * tl.math.rsqrt(mean_sq + eps)).to(ty)
    w = tl.load(weight_ptr + offs, mask=mask)
    out = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,  # [..., N]
    weight: torch.Tensor,  # [N]
    eps: float,
    *,
    out: torch.Tensor | None = None,  # [..., N] contiguous
) -> torch.Tensor:  # [..., N], in the promoted dtype of x and weight (as torch's)
    rows = _rows(x, weight)
    out = _output(out, x, torch.promote_types(x.dtype, weight.dtype))
    _launch(rows, rows, weight, out, eps, new_residual=None)
    return out


def fused_add_rms_norm(
    x: torch.Tensor,  # [..., N]
    residual: torch.Tensor,  # [..., N], same dtype
    weight: torch.Tensor,  # [N]
    eps: float,
    *,
    out: torch.Tensor | None = None,  # [..., N] contiguous
    residual_out: torch.Tensor | None = None,  # [..., N] contiguous
) -> tuple[torch.Tensor, torch.Tensor]:  # (normed, new_residual)
    """`new_residual = x + residual` and its RMSNorm in one pass (into `out` and
    `residual_out` when given, new tensors otherwise)."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual {residual.dtype} {list(residual.shape)} must match x {x.dtype}"
            f" {list(x.shape)}"
        )
    rows = _rows(x, weight)
    new_residual = _output(residual_out, x, x.dtype)
    out = _output(out, x, torch.promote_types(x.dtype, weight.dtype))
    _launch(rows, _rows(residual, weight), weight, out, eps, new_residual=new_residual)
    return out, new_residual


def _rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x as [M, N] with unit column stride (a view when possible)."""
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"weight must be [{n}], got {list(weight.shape)}")
    if n > _MAX_FUSED_N:
        raise ValueError(f"rows wider than {_MAX_FUSED_N} are not supported (got {n})")
    rows = x.reshape(-1, n)
    return rows if rows.stride(1) == 1 else rows.contiguous()


def _output(given: torch.Tensor | None, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if given is None:
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    if given.shape != x.shape or given.dtype != dtype or not given.is_contiguous():
        raise ValueError(f"outputs must be contiguous {dtype} {list(x.shape)}")
    return given


def _launch(
    rows: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    eps: float,
    *,
    new_residual: torch.Tensor | None,
) -> None:
    num_rows, n = rows.shape
    if num_rows == 0:
        return
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(num_rows,)](
        rows,
        residual,
        out if new_residual is None else new_residual,  # not touched without the add
        weight,
        out,
        rows.stride(0),
        residual.stride(0),
        n,
        eps,
        BLOCK=block,
        ADD_RESIDUAL=new_residual is not None,
        num_warps=min(max(block // 256, 1), 16),
    )
