"""`KVSlab`: the KV of some layers of some blocks of one request, the unit senders push."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class KVSlab:
    """K and V of `block_positions` (indices into the request's block table, not physical
    block ids) for layers [layer_start, layer_end).

    `data`: [layer_end - layer_start, 2 (K, V), len(block_positions), block_size,
    num_kv_heads, head_dim], on any device, any supported dtype.
    """

    request_id: str
    layer_start: int
    layer_end: int
    block_positions: list[int]
    data: torch.Tensor

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("KVSlab.request_id must be non-empty")
        if not 0 <= self.layer_start < self.layer_end:
            raise ValueError(
                f"KVSlab layers [{self.layer_start}, {self.layer_end}) must be a non-empty"
                " range of non-negative layer indices"
            )
        if not self.block_positions or min(self.block_positions) < 0:
            raise ValueError(
                f"KVSlab.block_positions must be non-empty and >= 0, got {self.block_positions}"
            )
        expected = (self.layer_end - self.layer_start, 2, len(self.block_positions))
        shape = tuple(self.data.shape)
        if self.data.dim() != 6 or shape[:3] != expected:
            raise ValueError(
                f"KVSlab.data has shape {shape}; expected [{expected[0]} layers, 2,"
                f" {expected[2]} blocks, block_size, num_kv_heads, head_dim]"
            )

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()
