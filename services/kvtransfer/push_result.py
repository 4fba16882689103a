"""What a receiver made of one push: the domain side of `PushKVResponse`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb


class PushStatus(enum.Enum):
    """Mirrors `kvferry.v1.PushStatus` (see the proto for each meaning)."""

    OK = pb.PUSH_STATUS_OK
    CORRUPT = pb.PUSH_STATUS_CORRUPT
    UNKNOWN_REQUEST = pb.PUSH_STATUS_UNKNOWN_REQUEST
    REJECTED = pb.PUSH_STATUS_REJECTED
    INCOMPLETE = pb.PUSH_STATUS_INCOMPLETE


@dataclass(frozen=True, slots=True)
class PushResult:
    status: PushStatus
    accepted_chunks: int = 0
    accepted_bytes: int = 0
    rejected_seqs: tuple[int, ...] = ()
    """Chunks that failed verification (status CORRUPT)."""
    completed: bool = False
    """The request's KV is complete and the sink was told (`KVSink.complete`)."""
    detail: str = ""

    def to_proto(self) -> pb.PushKVResponse:
        return pb.PushKVResponse(
            status=self.status.value,
            accepted_chunks=self.accepted_chunks,
            accepted_bytes=self.accepted_bytes,
            rejected_seqs=self.rejected_seqs,
            completed=self.completed,
            detail=self.detail,
        )

    @classmethod
    def from_proto(cls, msg: pb.PushKVResponse) -> PushResult:
        try:
            status = PushStatus(msg.status)
        except ValueError:
            raise ValueError(f"PushKVResponse has no valid status ({msg.status})") from None
        return cls(
            status=status,
            accepted_chunks=msg.accepted_chunks,
            accepted_bytes=msg.accepted_bytes,
            rejected_seqs=tuple(msg.rejected_seqs),
            completed=msg.completed,
            detail=msg.detail,
        )
