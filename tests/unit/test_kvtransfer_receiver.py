"""The receiving side of one push, message by message: verdicts and sink calls."""

from __future__ import annotations

import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.errors import TransferError
from kvferry.services.kvtransfer import (
    FaultPlan,
    KVSlab,
    MalformedPushError,
    PushReceiver,
    PushResult,
    PushStatus,
    TransferDirection,
    WireChunk,
    end_chunk,
    split_slab,
)


class RecordingSink:
    """Stores slabs of known requests; can be told to refuse."""

    def __init__(self, known: set[str] | None = None, *, refuse: str = "") -> None:
        self.known = known if known is not None else {"r"}
        self.refuse = refuse
        self.slabs: list[KVSlab] = []
        self.completed: dict[str, int] = {}

    def accept(self, slab: KVSlab) -> None:
        if slab.request_id not in self.known:
            raise KeyError(slab.request_id)
        if self.refuse:
            raise TransferError(self.refuse)
        self.slabs.append(slab)

    def complete(self, request_id: str, first_token_id: int) -> None:
        if request_id not in self.known:
            raise KeyError(request_id)
        if self.refuse:
            raise TransferError(self.refuse)
        self.completed[request_id] = first_token_id


def chunks(rid: str = "r", n_layers: int = 3) -> list[WireChunk]:
    data = torch.arange(n_layers * 2 * 2 * 4 * 1 * 2, dtype=torch.float32)
    slab = KVSlab(rid, 0, n_layers, [0, 1], data.reshape(n_layers, 2, 2, 4, 1, 2))
    return split_slab(slab, 2 * 2 * 4 * 1 * 2 * 4)  # one layer per chunk


def run(receiver: PushReceiver, messages: list[WireChunk]) -> PushResult:
    for message in messages:
        if not receiver.feed(message):
            break
    return receiver.finish()


def test_ok_push_writes_every_chunk_and_completes() -> None:
    sink = RecordingSink()
    data = chunks()
    result = run(PushReceiver(sink, peer="p"), [*data, end_chunk("r", 3, 42)])
    assert result == PushResult(
        PushStatus.OK,
        accepted_chunks=3,
        accepted_bytes=sum(c.payload_len for c in data),
        completed=True,
    )
    assert [s.layer_start for s in sink.slabs] == [0, 1, 2]
    assert sink.completed == {"r": 42}


def test_push_without_first_token_does_not_complete() -> None:
    sink = RecordingSink()
    result = run(PushReceiver(sink), [*chunks(), end_chunk("r", 3, None)])
    assert result.status is PushStatus.OK
    assert not result.completed
    assert sink.completed == {}


def test_end_only_push_completes() -> None:
    sink = RecordingSink()
    result = run(PushReceiver(sink), [end_chunk("r", 0, 9)])
    assert (result.status, result.completed, sink.completed) == (PushStatus.OK, True, {"r": 9})


def test_corrupt_chunk_is_dropped_and_named_and_blocks_completion() -> None:
    sink = RecordingSink()
    data = chunks()
    bad = FaultPlan(corrupt_seqs=frozenset({1})).apply(data[1], resend=False)
    result = run(PushReceiver(sink), [data[0], bad, data[2], end_chunk("r", 3, 42)])
    assert result.status is PushStatus.CORRUPT
    assert result.rejected_seqs == (1,)
    assert result.accepted_chunks == 2
    assert not result.completed
    assert [s.layer_start for s in sink.slabs] == [0, 2]
    assert sink.completed == {}


def test_unknown_request_stops_at_the_first_chunk() -> None:
    sink = RecordingSink(known=set())
    receiver = PushReceiver(sink)
    data = chunks()
    assert receiver.feed(data[0]) is False
    result = receiver.finish()
    assert result.status is PushStatus.UNKNOWN_REQUEST
    assert "'r'" in result.detail
    assert receiver.finish() is result  # decided once


def test_sink_refusal_is_rejected() -> None:
    result = run(PushReceiver(RecordingSink(refuse="positions [7] were not requested")), chunks())
    assert result.status is PushStatus.REJECTED
    assert "not requested" in result.detail


def test_completion_refused_is_rejected() -> None:
    sink = RecordingSink()
    receiver = PushReceiver(sink)
    for c in chunks():
        receiver.feed(c)
    sink.refuse = "still lacks KV"
    receiver.feed(end_chunk("r", 3, 1))
    result = receiver.finish()
    assert (result.status, result.completed) == (PushStatus.REJECTED, False)
    assert "still lacks KV" in result.detail


def test_unsupported_dtype_is_rejected() -> None:
    data = chunks()
    data[0].header.dtype = pb.DTYPE_FLOAT8_E4M3
    result = run(PushReceiver(RecordingSink()), data)
    assert result.status is PushStatus.REJECTED


@pytest.mark.parametrize(
    ("end", "detail"),
    [(None, "without end"), (end_chunk("r", 2, 1), "end says 2 chunks, 3 arrived")],
)
def test_truncated_push_is_incomplete(end: WireChunk | None, detail: str) -> None:
    sink = RecordingSink()
    messages = [*chunks(), *([end] if end is not None else [])]
    result = run(PushReceiver(sink), messages)
    assert result.status is PushStatus.INCOMPLETE
    assert detail in result.detail
    assert sink.completed == {}


def test_malformed_streams_raise() -> None:
    receiver = PushReceiver(RecordingSink(known={"r", "s"}))
    receiver.feed(chunks("r")[0])
    with pytest.raises(MalformedPushError, match="carries a chunk for 's'"):
        receiver.feed(chunks("s")[1])

    receiver = PushReceiver(RecordingSink())
    receiver.feed(end_chunk("r", 0, None))
    with pytest.raises(MalformedPushError, match="after its end"):
        receiver.feed(chunks()[0])

    with pytest.raises(MalformedPushError, match="empty request_id"):
        PushReceiver(RecordingSink()).feed(WireChunk(pb.KVChunk()))


def test_receive_stats() -> None:
    ticks = iter([10.0, 10.5])
    receiver = PushReceiver(RecordingSink(), peer="ipv4:1.2.3.4:5", clock=lambda: next(ticks))
    data = chunks()
    run(receiver, [*data, end_chunk("r", 3, None)])
    stats = receiver.stats()
    assert stats.direction is TransferDirection.RECEIVE
    assert (stats.request_id, stats.peer, stats.chunks) == ("r", "ipv4:1.2.3.4:5", 3)
    assert stats.bytes == sum(c.payload_len for c in data)
    assert stats.seconds == 0.5
    assert stats.gbps == pytest.approx(stats.bytes / 0.5 / 1e9)
