"""RMSNorm, alone and fused with the residual add, in plain torch: the reference the Triton
kernels (`rmsnorm`) are tested against, and the CPU path.

The formula is transformers': normalise in float32, cast back to the input dtype, *then*
scale by the weight (any other order changes bf16 results).
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor,  # [..., N]
    weight: torch.Tensor,  # [N]
    eps: float,
) -> torch.Tensor:  # [..., N]
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def fused_add_rms_norm(
    x: torch.Tensor,  # [..., N]
    residual: torch.Tensor,  # [..., N], same dtype
    weight: torch.Tensor,  # [N]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (normed, new_residual), both [..., N]
    """`new_residual = x + residual` (in the dtype), and its RMSNorm."""
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual
