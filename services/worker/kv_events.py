"""A worker's bounded history of prefix-cache events, numbered for the router's index.

The engine hands over its stored/removed/cleared events in order; each gets the next
sequence number (from 1; a restarted worker starts again and re-registers). A reader asks
for events after the last seq it saw; when some were already dropped from the bounded
history the answer says so (`truncated`), and the reader rebuilds from a clear. Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry.services.engine.block_pool import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
)


@dataclass(frozen=True, slots=True)
class EventsSince:
    events: list[tuple[int, KVEvent]]
    """(seq, event), oldest first."""
    last_seq: int
    truncated: bool
    """Events after the asked-for seq were dropped: rebuild from a clear plus `events`."""


class KVEventLog:
    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._events: deque[tuple[int, KVEvent]] = deque(maxlen=capacity)
        self.last_seq = 0

    def extend(self, events: Iterable[KVEvent]) -> None:
        for event in events:
            self.last_seq += 1
            self._events.append((self.last_seq, event))

    def since(self, seq: int) -> EventsSince:
        if seq < 0:
            raise ValueError(f"since_event_seq must be >= 0, got {seq}")
        oldest = self._events[0][0] if self._events else self.last_seq + 1
        truncated = seq + 1 < oldest and seq < self.last_seq
        return EventsSince([e for e in self._events if e[0] > seq], self.last_seq, truncated)


def event_to_proto(seq: int, event: KVEvent) -> pb.KVCacheEvent:
    if isinstance(event, BlockStored):
        return pb.KVCacheEvent(seq=seq, stored=pb.BlockStored(block_hashes=event.block_hashes))
    if isinstance(event, BlockRemoved):
        return pb.KVCacheEvent(seq=seq, removed=pb.BlockRemoved(block_hashes=event.block_hashes))
    if isinstance(event, AllBlocksCleared):
        return pb.KVCacheEvent(seq=seq, cleared=pb.AllBlocksCleared())
    raise TypeError(f"unknown KV event {event!r}")
