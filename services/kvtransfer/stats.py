"""Per-transfer measurements, and the bounded history a worker reports in `GetStats`."""

from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb

from .push_result import PushStatus


class TransferDirection(enum.Enum):
    SEND = pb.TRANSFER_DIRECTION_SEND
    RECEIVE = pb.TRANSFER_DIRECTION_RECEIVE


@dataclass(frozen=True, slots=True)
class TransferStats:
    """One finished push, seen from one side."""

    request_id: str
    direction: TransferDirection
    peer: str
    """The receiver's endpoint (send) or the sender's address (receive)."""
    bytes: int
    """Payload bytes moved; a resent chunk counts once."""
    chunks: int
    """Data chunks moved; a resent chunk counts once."""
    seconds: float
    """From the first chunk to the receiver's answer (resends included)."""
    resent_chunks: int = 0
    status: PushStatus = PushStatus.OK
    wire_seconds: float = 0.0
    """Of `seconds`, the time the link had KV to carry (send only): not counting the waits
    for the KV to be produced and encoded. 0 = not measured."""

    @property
    def gbps(self) -> float:
        """Payload gigabytes (1e9 bytes) per second."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_proto(self) -> pb.TransferRecord:
        return pb.TransferRecord(
            request_id=self.request_id,
            direction=self.direction.value,
            peer=self.peer,
            bytes=self.bytes,
            chunks=self.chunks,
            resent_chunks=self.resent_chunks,
            seconds=self.seconds,
            status=self.status.value,
            wire_seconds=self.wire_seconds,
        )


class TransferLog:
    """The last `capacity` transfers, oldest first. Safe to append from any thread."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"TransferLog capacity must be at least 1, got {capacity}")
        self._items: deque[TransferStats] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, stats: TransferStats) -> None:
        with self._lock:
            self._items.append(stats)

    def snapshot(self) -> list[TransferStats]:
        with self._lock:
            return list(self._items)
