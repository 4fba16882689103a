"""Deliberate faults a sender injects, so tests can prove the receiver catches them."""

from __future__ import annotations

from dataclasses import dataclass

from .wire_chunk import WireChunk


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Corrupt chunks on the way out, after their CRC32C was computed."""

    corrupt_seqs: frozenset[int] = frozenset()
    """Data chunks whose payload gets one byte flipped."""
    corrupt_resends: bool = False
    """Flip them again when resent (the sender then gives up), not just the first time."""

    def apply(self, chunk: WireChunk, *, resend: bool) -> WireChunk:
        """The chunk to put on the wire: `chunk` itself, or a corrupted copy."""
        if chunk.seq not in self.corrupt_seqs or chunk.is_end:
            return chunk
        if resend and not self.corrupt_resends:
            return chunk
        payload = bytearray(chunk.payload_bytes())
        payload[len(payload) // 2] ^= 0xFF
        return WireChunk(chunk.header, (bytes(payload),))
