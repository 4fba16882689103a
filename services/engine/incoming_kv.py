"""Which KV a decode worker still expects for a request admitted with remote prefill."""

from __future__ import annotations

from kvferry.errors import TransferError

from .block_pool import BlockId
from .scheduler import RemoteAdmission


class IncomingKV:
    """Tracks (layer, block position) pairs received against those the admission needs.

    Writing the same pair twice is allowed (a resent chunk); a position the admission did
    not ask for, or a layer outside the model, is a TransferError.
    """

    def __init__(self, admission: RemoteAdmission, num_layers: int) -> None:
        self.admission = admission
        self.num_layers = num_layers
        self._needed = set(admission.needed_block_positions)
        self._received: set[tuple[int, int]] = set()

    def accept(
        self, block_positions: list[int], layer_start: int, num_layers: int
    ) -> list[BlockId]:
        """Record a slab; returns the physical block ids its positions map to."""
        if layer_start < 0 or num_layers < 1 or layer_start + num_layers > self.num_layers:
            raise TransferError(
                f"layers [{layer_start}, {layer_start + num_layers}) are outside the model's"
                f" {self.num_layers} layers"
            )
        unexpected = sorted(set(block_positions) - self._needed)
        if unexpected:
            raise TransferError(f"block positions {unexpected} were not requested")
        for layer in range(layer_start, layer_start + num_layers):
            self._received.update((layer, p) for p in block_positions)
        return [self.admission.block_ids[p] for p in block_positions]

    def missing(self) -> str:
        """A short description of what has not arrived ('' when complete)."""
        total = self.num_layers * len(self._needed)
        if len(self._received) == total:
            return ""
        layers = sorted(
            {
                layer
                for layer in range(self.num_layers)
                if any((layer, p) not in self._received for p in self._needed)
            }
        )
        return f"{total - len(self._received)} block-layers (layers {layers[:8]}...)"
