"""Config validation, stats, and the proto mirrors of the kvtransfer domain types."""

from __future__ import annotations

import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.services.kvtransfer import (
    KVTransferConfig,
    PushResult,
    PushStatus,
    TransferDirection,
    TransferLog,
    TransferStats,
)
from kvferry.services.kvtransfer.dtypes import from_wire, to_wire


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_chunk_bytes": 0}, "max_chunk_bytes"),
        ({"max_chunk_bytes": 2 << 30}, "max_chunk_bytes"),
        ({"max_inflight_chunks": 0}, "max_inflight_chunks"),
        ({"max_concurrent_pushes": True}, "max_concurrent_pushes"),
        ({"stats_history": 1.5}, "stats_history"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KVTransferConfig(**kwargs)  # type: ignore[arg-type]


def test_grpc_limits_leave_room_for_the_header() -> None:
    config = KVTransferConfig(max_chunk_bytes=4 << 20)
    assert dict(config.grpc_options()) == {
        "grpc.max_send_message_length": 5 << 20,
        "grpc.max_receive_message_length": 5 << 20,
    }


def test_every_push_status_mirrors_the_proto() -> None:
    wire = {v for v in pb.PushStatus.values() if v != pb.PUSH_STATUS_UNSPECIFIED}
    assert {s.value for s in PushStatus} == wire
    assert {d.value for d in TransferDirection} == {
        v for v in pb.TransferDirection.values() if v != pb.TRANSFER_DIRECTION_UNSPECIFIED
    }


def test_push_result_round_trips_and_refuses_unspecified() -> None:
    result = PushResult(PushStatus.CORRUPT, 3, 300, (4, 9), False, "2 chunks failed")
    assert PushResult.from_proto(result.to_proto()) == result
    with pytest.raises(ValueError, match="no valid status"):
        PushResult.from_proto(pb.PushKVResponse())


def test_transfer_stats() -> None:
    stats = TransferStats("r", TransferDirection.SEND, "h:1", 2_000_000_000, 4, 0.5, 1)
    assert stats.gbps == 4.0
    assert TransferStats("r", TransferDirection.SEND, "h:1", 10, 1, 0.0).gbps == 0.0
    record = stats.to_proto()
    assert (record.bytes, record.chunks, record.resent_chunks) == (2_000_000_000, 4, 1)
    assert record.direction == pb.TRANSFER_DIRECTION_SEND
    assert record.status == pb.PUSH_STATUS_OK


def test_transfer_log_keeps_the_last_n() -> None:
    log = TransferLog(2)
    items = [TransferStats(str(i), TransferDirection.RECEIVE, "", i, 1, 1.0) for i in range(3)]
    for item in items:
        log.record(item)
    assert log.snapshot() == items[1:]
    with pytest.raises(ValueError, match="capacity"):
        TransferLog(0)


def test_dtype_mapping() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert from_wire(to_wire(dtype)) is dtype
