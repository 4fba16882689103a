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

    `scales`: set only on an FP8-compressed slab (`data` float8_e4m3fn): float32
    [layers, 2, blocks, num_kv_heads], one per (layer, K/V, block, head); an element of
    the KV is `data * scale` (see `compression`).
    """

    request_id: str
    layer_start: int
    layer_end: int
    block_positions: list[int]
    data: torch.Tensor
    scales: torch.Tensor | None = None

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
        if (self.scales is not None) != (self.data.dtype == torch.float8_e4m3fn):
            raise ValueError("KVSlab.scales must be set exactly when data is float8_e4m3fn")
        if self.scales is not None:
            scales_shape = (*shape[:3], shape[4])
            if tuple(self.scales.shape) != scales_shape or self.scales.dtype != torch.float32:
                raise ValueError(
                    f"KVSlab.scales is {self.scales.dtype} {tuple(self.scales.shape)};"
                    f" expected float32 {scales_shape} (layers, 2, blocks, num_kv_heads)"
                )

    @property
    def nbytes(self) -> int:
        """Bytes of KV on the wire (scales included)."""
        scales = 0 if self.scales is None else self.scales.numel() * 4
        return self.data.numel() * self.data.element_size() + scales
