"""Slabs to chunks and back: sizes, round trips bit for bit, and every verification error."""

from __future__ import annotations

import gc
import math
import warnings

import numpy as np
import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.errors import TransferError
from kvferry.services.kvtransfer import (
    ChunkCorruptError,
    ChunkTooLargeError,
    KVSlab,
    TransferRejectedError,
    WireChunk,
    assemble,
    crc32c,
    end_chunk,
    split_slab,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_slab(
    *,
    layers: tuple[int, int] = (0, 4),
    positions: list[int] | None = None,
    block_size: int = 4,
    heads: int = 2,
    head_dim: int = 8,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> KVSlab:
    positions = positions if positions is not None else [0, 1, 2]
    gen = torch.Generator().manual_seed(seed)
    shape = (layers[1] - layers[0], 2, len(positions), block_size, heads, head_dim)
    data = torch.randn(shape, generator=gen).to(dtype)
    return KVSlab("req-1", layers[0], layers[1], positions, data)


def block_layer_bytes(slab: KVSlab) -> int:
    return math.prod(slab.data.shape[3:]) * 2 * slab.data.element_size()


def reassemble(original: KVSlab, chunks: list[WireChunk]) -> torch.Tensor:
    """Place every chunk's tensor where it belongs in a tensor shaped like `original`."""
    out = torch.full_like(original.data, float("nan"))
    col = {p: i for i, p in enumerate(original.block_positions)}
    for chunk in chunks:
        part = assemble(chunk)
        rows = slice(part.layer_start - original.layer_start, part.layer_end - original.layer_start)
        cols = [col[p] for p in part.block_positions]
        out[rows, :, cols] = part.data
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_round_trip_random_shapes_is_bit_exact(dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    start = pick(0, 5)
    slab = make_slab(
        layers=(start, start + pick(1, 6)),
        positions=sorted(torch.randperm(40, generator=gen)[: pick(1, 9)].tolist()),
        block_size=pick(1, 8),
        heads=pick(1, 4),
        head_dim=pick(1, 16),
        dtype=dtype,
        seed=seed,
    )
    limit = block_layer_bytes(slab) * pick(1, 12)
    chunks = split_slab(slab, limit)

    assert all(c.payload_len <= limit for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert sum(c.payload_len for c in chunks) == slab.nbytes
    assert torch.equal(bits(reassemble(slab, chunks)), bits(slab.data))


def test_bfloat16_special_values_survive() -> None:
    slab = make_slab(dtype=torch.bfloat16)
    flat = slab.data.view(-1)
    flat[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40])
    (chunk,) = split_slab(slab, 1 << 20)
    assert torch.equal(bits(assemble(chunk).data), bits(slab.data))


def test_whole_layers_go_together_while_they_fit() -> None:
    slab = make_slab(layers=(2, 7), positions=[3, 5, 8])  # 5 layers x 3 blocks
    layer = 3 * block_layer_bytes(slab)
    chunks = split_slab(slab, 2 * layer)  # two layers per chunk
    heads = [c.header for c in chunks]
    assert [(h.layer_start, h.layer_end) for h in heads] == [(2, 4), (4, 6), (6, 7)]
    assert all(list(h.block_positions) == [3, 5, 8] for h in heads)
    assert list(heads[0].shape) == [2, 2, 3, 4, 2, 8]
    assert [len(c.payload) for c in chunks] == [1, 1, 1]  # whole layers: one view each


def test_a_layer_too_big_splits_by_blocks() -> None:
    slab = make_slab(layers=(0, 2), positions=[0, 1, 2, 7, 9])
    chunks = split_slab(slab, 2 * block_layer_bytes(slab))  # two blocks per chunk
    assert [len(c.payload) for c in chunks] == [2] * 6  # K and V runs
    assert [(c.header.layer_start, list(c.header.block_positions)) for c in chunks] == [
        (0, [0, 1]),
        (0, [2, 7]),
        (0, [9]),
        (1, [0, 1]),
        (1, [2, 7]),
        (1, [9]),
    ]


def test_whole_slab_in_one_chunk_and_seq_offset() -> None:
    slab = make_slab()
    (chunk,) = split_slab(slab, slab.nbytes, first_seq=7)
    assert chunk.seq == 7
    assert chunk.request_id == "req-1"
    assert chunk.header.dtype == pb.DTYPE_FLOAT32
    assert chunk.header.crc32c == crc32c(chunk.payload_bytes())
    assert not chunk.header.payload  # the payload never enters the protobuf message


def test_non_contiguous_slab_data() -> None:
    base = make_slab(positions=[0, 1, 2, 3])
    data = base.data[:, :, ::2]  # every other block: a strided view
    slab = KVSlab("req-1", 0, 4, [0, 2], data)
    chunks = split_slab(slab, block_layer_bytes(slab))
    assert torch.equal(reassemble(slab, chunks), data)


def test_one_block_layer_over_the_limit_is_a_clear_error() -> None:
    slab = make_slab()
    need = block_layer_bytes(slab)
    with pytest.raises(ChunkTooLargeError, match=f"at least {need}"):
        split_slab(slab, need - 1)
    assert issubclass(ChunkTooLargeError, TransferError)


def test_unsupported_dtype_cannot_be_sent() -> None:
    slab = KVSlab("r", 0, 1, [0], torch.zeros(1, 2, 1, 4, 1, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="cannot be transferred"):
        split_slab(slab)


# -- verification ------------------------------------------------------------------------
def one_chunk(dtype: torch.dtype = torch.float32) -> WireChunk:
    (chunk,) = split_slab(make_slab(dtype=dtype), 1 << 20)
    return chunk


def test_crc_mismatch_is_corrupt() -> None:
    chunk = one_chunk()
    payload = bytearray(chunk.payload_bytes())
    payload[10] ^= 0x01
    chunk.payload = (bytes(payload),)
    with pytest.raises(ChunkCorruptError, match="CRC32C"):
        assemble(chunk)


def test_shape_disagreeing_with_payload_length_is_corrupt() -> None:
    chunk = one_chunk()
    chunk.header.shape[3] += 1
    with pytest.raises(ChunkCorruptError, match="needs"):
        assemble(chunk)


def test_wrong_dtype_is_caught() -> None:
    chunk = one_chunk(torch.bfloat16)
    chunk.header.dtype = pb.DTYPE_FLOAT32  # half the bytes a float32 of that shape needs
    with pytest.raises(ChunkCorruptError, match="needs"):
        assemble(chunk)
    for wire in (pb.DTYPE_FLOAT8_E4M3, pb.DTYPE_UNSPECIFIED, 99):
        chunk.header.dtype = wire
        with pytest.raises(TransferRejectedError, match="not supported"):
            assemble(chunk)


def test_header_contradicting_shape_is_rejected() -> None:
    chunk = one_chunk()
    chunk.header.layer_end += 1
    with pytest.raises(TransferRejectedError, match="does not match its header"):
        assemble(chunk)
    chunk = one_chunk()
    chunk.header.block_positions.append(99)
    with pytest.raises(TransferRejectedError, match="does not match its header"):
        assemble(chunk)


def test_end_message_is_not_data() -> None:
    end = end_chunk("req-1", 3, first_token_id=5)
    assert end.seq == 3
    assert end.is_end
    assert end.header.end.total_chunks == 3
    assert end.header.end.first_token_id == 5
    assert not end_chunk("req-1", 0, None).header.end.HasField("first_token_id")
    with pytest.raises(TransferRejectedError, match="end message"):
        assemble(end)


def test_chunk_of_borrowed_memory_assembles_into_an_owned_copy() -> None:
    chunk = one_chunk()  # pieces view the sender's (writable) tensor
    slab = assemble(chunk)
    slab.data.zero_()  # must not raise, nor touch the sender's tensor
    assert assemble(chunk).data.abs().sum() > 0


def _address(piece: object) -> int:
    return int(np.frombuffer(piece, np.uint8).ctypes.data)  # type: ignore[call-overload]


def test_received_message_is_viewed_not_copied() -> None:
    sent = one_chunk(torch.bfloat16)
    message = sent.to_bytes()  # as gRPC hands it over: immutable bytes
    received = WireChunk.from_bytes(message)
    (piece,) = received.payload
    assert _address(piece) % 2 == 0  # this header leaves the bf16 payload aligned
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about read-only memory either
        slab = assemble(received)
    start = _address(message)
    assert start <= slab.data.data_ptr() < start + len(message)  # inside the message
    assert slab.data.data_ptr() == _address(piece)
    assert torch.equal(bits(slab.data), bits(assemble(sent).data))
    del received, piece, message
    gc.collect()
    assert torch.equal(bits(slab.data), bits(assemble(sent).data))  # the view keeps it alive


def test_misaligned_payload_is_copied_to_aligned_memory() -> None:
    sent = one_chunk(torch.float32)
    payload = sent.payload_bytes()
    backing = b"x" + payload  # payload at an odd address: no float32 view of it
    view = np.frombuffer(backing, np.uint8, offset=1)
    assert _address(view) % 4 != 0
    slab = assemble(WireChunk(sent.header, (view,)))
    assert slab.data.data_ptr() % 4 == 0
    assert torch.equal(slab.data, assemble(sent).data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"request_id": ""}, "request_id"),
        ({"layer_start": 2, "layer_end": 2}, "non-empty range"),
        ({"block_positions": []}, "block_positions"),
        ({"block_positions": [0, -1, 2]}, "block_positions"),
        ({"data": torch.zeros(4, 2, 3, 4, 2)}, "shape"),
        ({"data": torch.zeros(3, 2, 3, 4, 2, 8)}, "shape"),
    ],
)
def test_slab_validates_its_shape(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {
        "request_id": "r",
        "layer_start": 0,
        "layer_end": 4,
        "block_positions": [0, 1, 2],
        "data": torch.zeros(4, 2, 3, 4, 2, 8),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        KVSlab(**fields)  # type: ignore[arg-type]
