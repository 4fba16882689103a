"""`WireChunk`: one `KVChunk` message with its payload kept out of protobuf.

Protobuf would copy a multi-megabyte payload at every step: into the message, out to
bytes, into a parsed message, out again as a `bytes` attribute. A WireChunk keeps the
header fields in a `KVChunk` with no payload and the payload as buffers (views of the
sender's tensor, or of the received message): encoding writes header and payload into
the message bytes in one pass, and decoding leaves the payload as a view of the received
bytes. The bytes are exactly the `KVChunk` wire format (protobuf allows fields in any
order), so a plain protobuf peer interoperates either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb

from .errors import MalformedPushError

PUSH_KV_METHOD = "/{}/PushKV".format(pb.DESCRIPTOR.services_by_name["KVTransfer"].full_name)
"""The gRPC method path that carries WireChunks."""

_PAYLOAD_FIELD = pb.KVChunk.DESCRIPTOR.fields_by_name["payload"].number
_LENGTH_DELIMITED = 2
_PAYLOAD_KEY = (_PAYLOAD_FIELD << 3) | _LENGTH_DELIMITED

Buffer = np.ndarray | bytes
"""A contiguous run of payload bytes (uint8 arrays are views, never copies)."""


@dataclass(slots=True)
class WireChunk:
    header: pb.KVChunk
    """Every field but `payload`."""
    payload: tuple[Buffer, ...] = ()
    """The payload, as buffers to be concatenated in order."""

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def request_id(self) -> str:
        return self.header.request_id

    @property
    def is_end(self) -> bool:
        return bool(self.header.HasField("end"))

    @property
    def payload_len(self) -> int:
        return sum(len(b) if isinstance(b, bytes) else b.nbytes for b in self.payload)

    def payload_bytes(self) -> bytes:
        """The payload as one `bytes` (a copy; for tests and fault injection)."""
        return b"".join(_buffers(self.payload))

    def to_bytes(self) -> bytes:
        """The serialized `KVChunk`: one allocation, one copy of the payload."""
        head: bytes = self.header.SerializeToString()
        size = self.payload_len
        if size == 0:
            return head
        return b"".join((head, _varint(_PAYLOAD_KEY), _varint(size), *_buffers(self.payload)))

    @classmethod
    def from_bytes(cls, data: bytes) -> WireChunk:
        """Parse a serialized `KVChunk`, leaving the payload as a view of `data`."""
        span = _payload_span(data)
        if span is None:
            return cls(pb.KVChunk.FromString(data))
        field_start, start, end = span
        header = pb.KVChunk.FromString(data[:field_start] + data[end:])
        header.ClearField("payload")  # an earlier duplicate: protobuf's last one wins
        return cls(header, (np.frombuffer(data, np.uint8, count=end - start, offset=start),))

    @classmethod
    def from_proto(cls, msg: pb.KVChunk) -> WireChunk:
        header = pb.KVChunk()
        header.CopyFrom(msg)
        header.ClearField("payload")
        return cls(header, (msg.payload,) if msg.payload else ())

    def to_proto(self) -> pb.KVChunk:
        msg = pb.KVChunk()
        msg.CopyFrom(self.header)
        msg.payload = self.payload_bytes()
        return msg


def _buffers(payload: tuple[Buffer, ...]) -> tuple[bytes, ...]:
    # NOTE: uint8 arrays support the buffer protocol; numpy's stubs just don't say so.
    return cast(tuple[bytes, ...], payload)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise MalformedPushError("KVChunk bytes end inside a varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _payload_span(data: bytes) -> tuple[int, int, int] | None:
    """(field start, payload start, payload end) of the last `payload` field, if any.

    Walks the top-level fields only; the payload is skipped over, never copied.
    """
    found = None
    i, size = 0, len(data)
    while i < size:
        field_start = i
        key, i = _read_varint(data, i)
        wire_type = key & 7
        if wire_type == 0:
            _, i = _read_varint(data, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, i = _read_varint(data, i)
            if key == _PAYLOAD_KEY:
                found = (field_start, i, i + length)
            i += length
        else:
            raise MalformedPushError(f"KVChunk bytes hold an unsupported wire type {wire_type}")
    if i != size:
        raise MalformedPushError("KVChunk bytes end inside a field")
    return found
