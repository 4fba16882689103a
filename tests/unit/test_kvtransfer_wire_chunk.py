"""WireChunk bytes are exactly the KVChunk wire format, without protobuf payload copies."""

from __future__ import annotations

import numpy as np
import pytest

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.services.kvtransfer import MalformedPushError, WireChunk, end_chunk


def header(**fields: object) -> pb.KVChunk:
    base: dict[str, object] = {
        "request_id": "req-7",
        "seq": 3,
        "layer_start": 2,
        "layer_end": 3,
        "block_positions": [4, 300, 70000],
        "dtype": pb.DTYPE_BFLOAT16,
        "shape": [1, 2, 3, 16, 8, 128],
        "crc32c": 0xDEADBEEF,
    }
    base.update(fields)
    return pb.KVChunk(**base)  # type: ignore[arg-type]


PIECES = (np.arange(200, dtype=np.uint8), b"\x00\xff" * 100, np.arange(7, dtype=np.uint8))


def test_encoding_is_the_protobuf_wire_format() -> None:
    chunk = WireChunk(header(), PIECES)
    wire = chunk.to_bytes()
    parsed = pb.KVChunk.FromString(wire)
    assert parsed == chunk.to_proto()
    assert parsed.payload == b"".join(bytes(p) for p in PIECES)
    assert chunk.payload_len == 407


def test_decoding_views_the_payload_and_keeps_the_header() -> None:
    msg = header(payload=bytes(range(256)) * 1000)
    wire = msg.SerializeToString()  # protobuf's own field order (payload before crc32c)
    chunk = WireChunk.from_bytes(wire)
    assert chunk.header == header()
    (view,) = chunk.payload
    assert isinstance(view, np.ndarray)
    assert view.base is not None  # a view of `wire`, not a copy
    assert chunk.payload_bytes() == msg.payload
    assert (chunk.seq, chunk.request_id, chunk.is_end) == (3, "req-7", False)


def test_round_trip_through_bytes() -> None:
    chunk = WireChunk(header(), PIECES)
    again = WireChunk.from_bytes(chunk.to_bytes())
    assert again.header == chunk.header
    assert again.payload_bytes() == chunk.payload_bytes()


def test_end_message_and_large_varints() -> None:
    end = end_chunk("r", 2**20, first_token_id=2**31)
    again = WireChunk.from_bytes(end.to_bytes())
    assert again.is_end
    assert again.payload == ()
    assert again.header.end.total_chunks == 2**20
    assert again.header.end.first_token_id == 2**31


def test_a_repeated_payload_field_keeps_the_last_like_protobuf() -> None:
    wire = (
        header(payload=b"first").SerializeToString()
        + pb.KVChunk(payload=b"last").SerializeToString()
    )
    assert pb.KVChunk.FromString(wire).payload == b"last"
    chunk = WireChunk.from_bytes(wire)
    assert chunk.payload_bytes() == b"last"
    assert chunk.header.payload == b""


def test_proto_conversions() -> None:
    msg = header(payload=b"abc")
    chunk = WireChunk.from_proto(msg)
    assert chunk.header == header()
    assert chunk.to_proto() == msg
    assert WireChunk.from_proto(header()).payload == ()


@pytest.mark.parametrize(
    "wire",
    [
        b"\x42\x05ab",  # payload says 5 bytes, has 2
        b"\x08",  # a varint field with no value
        b"\x0b\x00",  # wire type 3 (groups)
    ],
)
def test_malformed_bytes_are_rejected(wire: bytes) -> None:
    with pytest.raises(MalformedPushError):
        WireChunk.from_bytes(wire)
