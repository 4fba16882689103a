"""FP8 KV compression on the wire: the codec, chunking with scales, and the receiver's
refusal of a compression that is not its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.kernels import kv_pack_ref
from kvferry.services.kvtransfer import (
    ChunkCorruptError,
    KVSlab,
    PushReceiver,
    PushStatus,
    TransferRejectedError,
    assemble,
    crc32c,
    end_chunk,
    split_slab,
)
from kvferry.services.kvtransfer.compression import KVCodec, KVCompression
from kvferry.services.worker.config import KV_COMPRESSIONS, WorkerConfig

FP8 = KVCodec(KVCompression.FP8)


def make_slab(
    layers: int = 3, positions: tuple[int, ...] = (4, 1, 7), dtype: torch.dtype = torch.bfloat16
) -> KVSlab:
    gen = torch.Generator().manual_seed(layers)
    data = torch.randn(layers, 2, len(positions), 4, 2, 8, generator=gen) * 3
    return KVSlab("r", 2, 2 + layers, list(positions), data.to(dtype))


def reassemble(original: KVSlab, parts: list[KVSlab]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 data as uint8, scales) of every part placed where it belongs."""
    data = torch.zeros(original.data.shape, dtype=torch.uint8)
    scales = torch.full((*original.data.shape[:3], original.data.shape[4]), float("nan"))
    col = {p: i for i, p in enumerate(original.block_positions)}
    for part in parts:
        assert part.scales is not None
        rows = slice(part.layer_start - original.layer_start, part.layer_end - original.layer_start)
        cols = [col[p] for p in part.block_positions]
        data[rows, :, cols] = part.data.view(torch.uint8)
        scales[rows, :, cols] = part.scales
    return data, scales


def test_flag_values_are_the_enum() -> None:
    assert set(KV_COMPRESSIONS) == {c.value for c in KVCompression}
    for member in KVCompression:
        assert KVCompression.from_wire(member.wire) is member
    with pytest.raises(TransferRejectedError, match="unknown KV compression 7"):
        KVCompression.from_wire(7)
    with pytest.raises(ValueError, match="kv_compression must be one of none, fp8"):
        WorkerConfig(kv_compression="int4")


def test_codec_quantizes_per_layer_kv_block_and_head() -> None:
    slab = make_slab()
    assert KVCodec().encode(slab) is slab  # uncompressed: untouched
    encoded = FP8.encode(slab)
    assert encoded.data.dtype == torch.float8_e4m3fn and encoded.scales is not None
    assert encoded.scales.shape == (3, 2, 3, 2)
    # an independent check of one scale: the amax of its (layer, V, block, head) group / 448
    group = slab.data[1, 1, 2, :, 0, :].float()
    assert encoded.scales[1, 1, 2, 0] == group.abs().max() / 448
    decoded = FP8.decode(encoded, torch.bfloat16, torch.device("cpu"))
    expected = kv_pack_ref.dequantize_fp8(
        *kv_pack_ref.quantize_fp8(slab.data), dtype=torch.bfloat16
    )
    assert torch.equal(decoded, expected)
    x = slab.data.float()
    assert ((decoded.float() - x).abs() <= x.abs() / 16 + 2**-9 * x.abs().max()).all()
    # an uncompressed slab decodes to its own data (the cache write stays bit-exact)
    assert FP8.decode(slab, torch.bfloat16, torch.device("cpu")) is slab.data
    with pytest.raises(ValueError, match="already compressed"):
        FP8.encode(encoded)


@pytest.mark.parametrize("max_chunk_bytes", [1 << 20, 2 * 4 * 2 * 8, 2 * 4 * 2 * 8 * 3 * 2])
def test_fp8_chunks_carry_their_own_scales_and_round_trip(max_chunk_bytes: int) -> None:
    slab = FP8.encode(make_slab())
    chunks = split_slab(slab, max_chunk_bytes)
    for chunk in chunks:
        head = chunk.header
        assert head.compression == pb.KV_COMPRESSION_FP8_E4M3
        assert head.dtype == pb.DTYPE_FLOAT8_E4M3
        assert head.crc32c == crc32c(chunk.payload_bytes(), head.scales)
        assert (
            len(head.scales)
            == 4 * (head.layer_end - head.layer_start) * 2 * len(head.block_positions) * 2
        )
    parts = [assemble(c, KVCompression.FP8) for c in chunks]
    data, scales = reassemble(slab, parts)
    assert slab.scales is not None
    assert torch.equal(data, slab.data.view(torch.uint8))
    assert torch.equal(scales, slab.scales)


def test_fp8_payload_is_a_quarter_of_float32() -> None:
    exact = make_slab(dtype=torch.float32)
    (plain,) = split_slab(exact, 1 << 20)
    (fp8,) = split_slab(FP8.encode(exact), 1 << 20)
    assert fp8.payload_len * 4 == plain.payload_len
    assert len(fp8.header.scales) == 3 * 2 * 3 * 2 * 4  # one float per (layer, K/V, block, head)


def test_compression_mismatch_is_rejected_both_ways() -> None:
    (fp8,) = split_slab(FP8.encode(make_slab()), 1 << 20)
    mismatch = "compression 'fp8'; this receiver takes 'none'"
    with pytest.raises(TransferRejectedError, match=mismatch):
        assemble(fp8)
    (plain,) = split_slab(make_slab(), 1 << 20)
    with pytest.raises(TransferRejectedError, match="same --kv-compression"):
        assemble(plain, KVCompression.FP8)


def test_scales_are_checksummed_and_checked() -> None:
    (chunk,) = split_slab(FP8.encode(make_slab()), 1 << 20)
    flipped = bytearray(chunk.header.scales)
    flipped[5] ^= 0x10
    chunk.header.scales = bytes(flipped)
    with pytest.raises(ChunkCorruptError, match="CRC32C"):
        assemble(chunk, KVCompression.FP8)

    (chunk,) = split_slab(FP8.encode(make_slab()), 1 << 20)
    chunk.header.scales = chunk.header.scales[:-4]
    chunk.header.crc32c = crc32c(chunk.payload_bytes(), chunk.header.scales)
    with pytest.raises(ChunkCorruptError, match="bytes of scales"):
        assemble(chunk, KVCompression.FP8)

    (chunk,) = split_slab(FP8.encode(make_slab()), 1 << 20)
    chunk.header.dtype = pb.DTYPE_BFLOAT16
    with pytest.raises(TransferRejectedError, match="must have dtype FLOAT8_E4M3"):
        assemble(chunk, KVCompression.FP8)

    (chunk,) = split_slab(make_slab(), 1 << 20)
    chunk.header.scales = np.ones(4, np.float32).tobytes()
    chunk.header.crc32c = crc32c(chunk.payload_bytes(), chunk.header.scales)
    with pytest.raises(TransferRejectedError, match="uncompressed chunk carries scales"):
        assemble(chunk)


def test_slab_requires_scales_exactly_with_fp8_data() -> None:
    encoded = FP8.encode(make_slab())
    assert encoded.scales is not None
    with pytest.raises(ValueError, match="exactly when data is float8"):
        KVSlab("r", 2, 5, [4, 1, 7], encoded.data)
    with pytest.raises(ValueError, match="exactly when data is float8"):
        KVSlab("r", 2, 5, [4, 1, 7], make_slab().data, encoded.scales)
    with pytest.raises(ValueError, match="expected float32"):
        KVSlab("r", 2, 5, [4, 1, 7], encoded.data, encoded.scales[:, :, :2])
    assert encoded.nbytes == encoded.data.numel() + encoded.scales.numel() * 4


class _Sink:
    def __init__(self) -> None:
        self.slabs: list[KVSlab] = []

    def accept(self, slab: KVSlab) -> None:
        self.slabs.append(slab)

    def complete(self, request_id: str, first_token_id: int) -> None:
        raise AssertionError("a rejected push must not complete")


def test_receiver_refuses_a_push_compressed_otherwise() -> None:
    sink = _Sink()
    receiver = PushReceiver(sink)  # takes uncompressed KV only
    (chunk,) = split_slab(FP8.encode(make_slab()), 1 << 20)
    assert not receiver.feed(chunk)
    result = receiver.finish()
    assert result.status is PushStatus.REJECTED
    assert "--kv-compression" in result.detail
    assert sink.slabs == []

    receiver = PushReceiver(sink, compression=KVCompression.FP8)
    assert receiver.feed(chunk) and receiver.feed(end_chunk("r", 1, None))
    assert receiver.finish().status is PushStatus.OK
    (slab,) = sink.slabs
    assert slab.scales is not None and slab.data.dtype == torch.float8_e4m3fn
