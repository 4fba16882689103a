"""Sizing and allocating the paged KV pool from an explicit memory budget.

The pool is sized once, at start-up, and never grows: on CPU from a byte budget, on CUDA
from a share of the device memory still free after the weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvferry.errors import CapacityError

from .config import EngineConfig
from .model.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """Runtime-derived KV pool shape (not configuration)."""

    num_blocks: int
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        return block_bytes(
            self.num_layers, self.num_kv_heads, self.head_dim, self.block_size, self.dtype
        )

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block


def block_bytes(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes of one block across all layers, K and V."""
    return 2 * num_layers * num_kv_heads * head_dim * block_size * dtype.itemsize


def plan_cache(
    config: EngineConfig, model: ModelConfig, dtype: torch.dtype, device: torch.device
) -> CacheLayout:
    per_block = block_bytes(
        model.num_hidden_layers, model.num_key_value_heads, model.head_dim, config.block_size, dtype
    )
    if config.num_kv_blocks is not None:
        num_blocks = config.num_kv_blocks
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        num_blocks = int(free * config.gpu_memory_utilization) // per_block
    else:
        num_blocks = config.kv_cache_bytes // per_block
    if num_blocks < 1:
        raise CapacityError(
            f"the KV budget holds no block of {per_block} bytes; raise kv_cache_bytes"
            " (CPU) or gpu_memory_utilization (CUDA), or set num_kv_blocks"
        )
    return CacheLayout(
        num_blocks=num_blocks,
        block_size=config.block_size,
        num_layers=model.num_hidden_layers,
        num_kv_heads=model.num_key_value_heads,
        head_dim=model.head_dim,
        dtype=dtype,
    )


def allocate_kv_caches(layout: CacheLayout, device: torch.device) -> list[torch.Tensor]:
    """One tensor per layer: [2, num_blocks, block_size, num_kv_heads, head_dim]."""
    shape = (2, layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    return [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.num_layers)]
