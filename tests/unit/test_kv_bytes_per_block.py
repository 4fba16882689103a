"""The router's KV bytes per block (placement's transfer estimate and layout check) equal
what the KV transfer path really puts on the wire for one block, compressed or not."""

from __future__ import annotations

import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry.services.kvtransfer import KVSlab
from kvferry.services.kvtransfer.chunking import split_slab
from kvferry.services.kvtransfer.compression import KVCodec, KVCompression
from kvferry.services.router.registry_servicer import kv_bytes_per_block

LAYERS, BLOCK, HEADS, DIM = 3, 4, 2, 8


def wire_bytes(dtype: torch.dtype, compression: KVCompression, blocks: int) -> int:
    data = torch.randn(LAYERS, 2, blocks, BLOCK, HEADS, DIM).to(dtype)
    slab = KVCodec(compression).encode(KVSlab("r", 0, LAYERS, list(range(blocks)), data))
    return sum(c.payload_len + len(c.header.scales) for c in split_slab(slab, 1 << 20))


@pytest.mark.parametrize(
    ("dtype", "proto_dtype"),
    [
        (torch.float32, kv_pb.DTYPE_FLOAT32),
        (torch.float16, kv_pb.DTYPE_FLOAT16),
        (torch.bfloat16, kv_pb.DTYPE_BFLOAT16),
    ],
)
@pytest.mark.parametrize(
    ("compression", "proto_compression"),
    [
        (KVCompression.NONE, kv_pb.KV_COMPRESSION_NONE),
        (KVCompression.FP8, kv_pb.KV_COMPRESSION_FP8_E4M3),
    ],
)
def test_bytes_per_block_are_the_wire_bytes(
    dtype: torch.dtype, proto_dtype: int, compression: KVCompression, proto_compression: int
) -> None:
    layout = kv_pb.KVLayout(
        block_size=BLOCK,
        num_layers=LAYERS,
        num_kv_heads=HEADS,
        head_dim=DIM,
        dtype=proto_dtype,  # type: ignore[arg-type]
        compression=proto_compression,  # type: ignore[arg-type]
    )
    per_block = kv_bytes_per_block(layout)
    assert per_block > 0
    for blocks in (1, 5):
        assert wire_bytes(dtype, compression, blocks) == blocks * per_block


def test_an_unset_layout_has_no_size() -> None:
    assert kv_bytes_per_block(kv_pb.KVLayout()) == 0
    fp8 = kv_pb.KVLayout(block_size=4, num_layers=1, num_kv_heads=1, head_dim=8)
    fp8.compression = kv_pb.KV_COMPRESSION_FP8_E4M3
    assert kv_bytes_per_block(fp8) == 0  # no dtype: not a real layout
