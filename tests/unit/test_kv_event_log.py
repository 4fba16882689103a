"""KVEventLog numbers events from 1, bounds its history, and flags gaps."""

from __future__ import annotations

import pytest

from kvferry.services.engine.block_hash import BlockHash
from kvferry.services.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored
from kvferry.services.worker.kv_events import KVEventLog, event_to_proto


def _stored(*hashes: int) -> BlockStored:
    return BlockStored(tuple(BlockHash(h) for h in hashes))


def test_events_are_numbered_and_read_since_a_seq() -> None:
    log = KVEventLog(capacity=10)
    assert log.since(0).events == [] and log.since(0).last_seq == 0
    log.extend([_stored(1, 2), BlockRemoved((BlockHash(1),)), AllBlocksCleared()])
    got = log.since(1)
    assert [seq for seq, _ in got.events] == [2, 3]
    assert (got.last_seq, got.truncated) == (3, False)
    assert log.since(3).events == [] and not log.since(3).truncated


@pytest.mark.parametrize(
    ("since", "seqs", "truncated"),
    [(0, [3, 4, 5], True), (1, [3, 4, 5], True), (2, [3, 4, 5], False), (4, [5], False)],
)
def test_a_reader_behind_the_bounded_history_is_told(
    since: int, seqs: list[int], truncated: bool
) -> None:
    log = KVEventLog(capacity=3)
    log.extend(_stored(i) for i in range(5))  # seqs 1..5, 1 and 2 dropped
    got = log.since(since)
    assert [seq for seq, _ in got.events] == seqs
    assert got.truncated is truncated


def test_negative_seq_and_capacity_are_refused() -> None:
    with pytest.raises(ValueError, match="since_event_seq"):
        KVEventLog().since(-1)
    with pytest.raises(ValueError, match="capacity"):
        KVEventLog(0)


def test_events_convert_to_proto() -> None:
    assert list(event_to_proto(7, _stored(2**64 - 1, 5)).stored.block_hashes) == [2**64 - 1, 5]
    assert event_to_proto(8, BlockRemoved((BlockHash(3),))).WhichOneof("event") == "removed"
    assert event_to_proto(9, AllBlocksCleared()).seq == 9
