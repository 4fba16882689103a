"""Slabs to wire chunks and back: split by size, checksum, verify. Pure (no I/O).

A slab is split along layers first (whole layers per chunk while they fit) and then along
blocks, so a chunk is always a dense [layers, 2, blocks, block_size, heads, head_dim]
tensor. Payloads are raw little-endian bytes; bfloat16 travels as its 16-bit patterns, so
every dtype round-trips bit for bit. Splitting copies nothing (chunks view the slab);
assembling a received message copies nothing either (the slab views the message bytes,
which are read-only: see `KVSink`), so the only copy on the receiving side is the sink's
own, into its cache.

An FP8-compressed slab (see `compression`) travels the same way with one-byte elements;
each chunk carries the float32 scales of its own layers and blocks in `scales`, covered by
the CRC32C after the payload. A receiver checks that a chunk's compression is its own.
"""

from __future__ import annotations

import math
import warnings

import google_crc32c
import numpy as np
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb

from .compression import KVCompression
from .dtypes import from_wire, to_wire
from .errors import ChunkCorruptError, ChunkTooLargeError, TransferRejectedError
from .slab import KVSlab
from .wire_chunk import Buffer, WireChunk

DEFAULT_MAX_CHUNK_BYTES = 4 << 20


def crc32c(*buffers: Buffer) -> int:
    """CRC32C (Castagnoli) of the concatenated buffers, as carried in `KVChunk.crc32c`."""
    crc = 0
    for buffer in buffers:
        crc = google_crc32c.extend(crc, buffer)
    return int(crc)


def split_slab(
    slab: KVSlab, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, *, first_seq: int = 0
) -> list[WireChunk]:
    """Chunks of at most `max_chunk_bytes` payload each, numbered from `first_seq`.

    Payloads are views of the slab's (CPU, contiguous) memory, not copies: leave the
    tensor alone until the push is answered. Raises ChunkTooLargeError when one block of
    one layer alone exceeds the limit.
    """
    data = _host(slab.data)
    scales = None if slab.scales is None else _host(slab.scales).numpy()  # [L, 2, n, Hkv]
    compression = KVCompression.NONE if scales is None else KVCompression.FP8
    num_layers, _, num_blocks = data.shape[:3]
    block_layer_bytes = data[0, :, 0].numel() * data.element_size()  # [2, BS, Hkv, D]
    if block_layer_bytes > max_chunk_bytes:
        raise ChunkTooLargeError(
            f"one block of one layer is {block_layer_bytes} bytes, more than max_chunk_bytes"
            f" ({max_chunk_bytes}); raise max_chunk_bytes to at least {block_layer_bytes}"
        )
    layer_bytes = block_layer_bytes * num_blocks
    if layer_bytes <= max_chunk_bytes:
        layers_per_chunk, blocks_per_chunk = max_chunk_bytes // layer_bytes, num_blocks
    else:
        layers_per_chunk, blocks_per_chunk = 1, max_chunk_bytes // block_layer_bytes
    wire_dtype = pb.DTYPE_FLOAT8_E4M3 if scales is not None else to_wire(data.dtype)
    raw = data.view(torch.uint8).numpy()  # [L, 2, B, BS, Hkv, D * itemsize], no copy

    chunks: list[WireChunk] = []
    for l0 in range(0, num_layers, layers_per_chunk):
        l1 = min(l0 + layers_per_chunk, num_layers)
        for b0 in range(0, num_blocks, blocks_per_chunk):
            b1 = min(b0 + blocks_per_chunk, num_blocks)
            if b1 - b0 == num_blocks:  # whole layers: one contiguous run
                pieces: tuple[Buffer, ...] = (raw[l0:l1].reshape(-1),)
            else:  # K then V of each layer: contiguous runs of blocks
                pieces = tuple(
                    raw[layer, kv, b0:b1].reshape(-1) for layer in range(l0, l1) for kv in (0, 1)
                )
            header = pb.KVChunk(
                request_id=slab.request_id,
                seq=first_seq + len(chunks),
                layer_start=slab.layer_start + l0,
                layer_end=slab.layer_start + l1,
                block_positions=slab.block_positions[b0:b1],
                dtype=wire_dtype,
                shape=[l1 - l0, 2, b1 - b0, *data.shape[3:]],
                compression=compression.wire,
            )
            if scales is not None:  # a small copy: [layers, 2, blocks, Hkv] float32
                header.scales = scales[l0:l1, :, b0:b1].tobytes()
            header.crc32c = crc32c(*pieces, header.scales)
            chunks.append(WireChunk(header, pieces))
    return chunks


def end_chunk(request_id: str, total_chunks: int, first_token_id: int | None) -> WireChunk:
    """The last message of a push: no payload, the data-chunk count, maybe the first token."""
    end = pb.KVPushEnd(total_chunks=total_chunks)
    if first_token_id is not None:
        end.first_token_id = first_token_id
    return WireChunk(pb.KVChunk(request_id=request_id, seq=total_chunks, end=end))


def assemble(chunk: WireChunk, compression: KVCompression = KVCompression.NONE) -> KVSlab:
    """Verify a data chunk and turn it back into a slab on the CPU; the receiver takes
    `compression` only.

    A payload that is one read-only buffer (a received message) is viewed, not copied
    (unless misaligned for the dtype):
    the slab's tensor keeps the message alive and must not be written (see `KVSink`).
    Any other payload (pieces viewing someone's writable memory, e.g. a sender's slab)
    is copied once into memory the tensor owns.

    ChunkCorruptError: CRC32C mismatch, or shape disagreeing with the payload length.
    TransferRejectedError: not a data chunk, another compression than `compression`, an
    unsupported dtype, or header fields that contradict each other (a sender bug or a
    misconfigured pair; resending will not help).
    """
    head = chunk.header
    where = f"chunk {head.seq} of {head.request_id!r}"
    if chunk.is_end:
        raise TransferRejectedError(f"{where} is an end message, not data")
    sent = KVCompression.from_wire(head.compression)
    if sent is not compression:
        raise TransferRejectedError(
            f"{where} carries KV with compression {sent.value!r}; this receiver takes"
            f" {compression.value!r} (give both workers the same --kv-compression)"
        )
    size = chunk.payload_len
    actual_crc = crc32c(*chunk.payload, head.scales)
    if actual_crc != head.crc32c:
        raise ChunkCorruptError(
            f"{where}: CRC32C {actual_crc:#010x} != {head.crc32c:#010x} sent ({size} payload bytes)"
        )
    dtype = _payload_dtype(head, compression, where)
    shape = tuple(head.shape)
    num_layers = head.layer_end - head.layer_start
    header = (num_layers, 2, len(head.block_positions))
    if len(shape) != 6 or shape[:3] != header or min(shape) < 1:
        raise TransferRejectedError(
            f"{where}: shape {list(shape)} does not match its header ({num_layers} layers"
            f" from {head.layer_start}, {len(head.block_positions)} block positions)"
        )
    expected_bytes = math.prod(shape) * dtype.itemsize
    if expected_bytes != size:
        raise ChunkCorruptError(
            f"{where}: shape {list(shape)} of {dtype} needs {expected_bytes} bytes,"
            f" payload has {size}"
        )
    scales = _scales(head, shape, compression, where)
    out = _view(chunk.payload)
    if out is None or out.data_ptr() % dtype.itemsize:
        # NOTE: a view of the elements at a misaligned address would be undefined
        # behaviour for typed kernels; numpy's allocation is aligned (and, unlike
        # torch.empty's, reuses warm heap memory instead of faulting in fresh pages).
        out = torch.from_numpy(np.concatenate([np.frombuffer(p, np.uint8) for p in chunk.payload]))
    return KVSlab(
        request_id=head.request_id,
        layer_start=head.layer_start,
        layer_end=head.layer_end,
        block_positions=list(head.block_positions),
        data=out.view(dtype).reshape(shape),
        scales=scales,
    )


def _host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _payload_dtype(head: pb.KVChunk, compression: KVCompression, where: str) -> torch.dtype:
    if compression is KVCompression.NONE:
        return from_wire(head.dtype)
    if head.dtype != pb.DTYPE_FLOAT8_E4M3:
        raise TransferRejectedError(
            f"{where}: an FP8-compressed chunk must have dtype FLOAT8_E4M3, not"
            f" {pb.DType.Name(head.dtype) if head.dtype in pb.DType.values() else head.dtype}"
        )
    return torch.float8_e4m3fn


def _scales(
    head: pb.KVChunk, shape: tuple[int, ...], compression: KVCompression, where: str
) -> torch.Tensor | None:
    """The chunk's FP8 scales `[L, 2, n, Hkv]` (a copy; a few bytes per block), or None."""
    if compression is KVCompression.NONE:
        if head.scales:
            raise TransferRejectedError(f"{where}: an uncompressed chunk carries scales")
        return None
    scales_shape = (*shape[:3], shape[4])
    expected = math.prod(scales_shape) * 4
    if len(head.scales) != expected:
        raise ChunkCorruptError(
            f"{where}: {len(head.scales)} bytes of scales; shape {list(shape)} needs {expected}"
        )
    values = np.frombuffer(head.scales, dtype="<f4").reshape(scales_shape)
    return torch.from_numpy(values.copy())


def _view(payload: tuple[Buffer, ...]) -> torch.Tensor | None:
    """The payload as a uint8 tensor sharing its memory, when it is one read-only buffer
    (aliasing immutable memory is safe; aliasing a caller's writable memory is not)."""
    if len(payload) != 1:
        return None
    (piece,) = payload
    if isinstance(piece, np.ndarray) and piece.flags.writeable:
        return None
    return torch.frombuffer(piece, dtype=torch.uint8)


def _take_torch_read_only_warning() -> None:
    """NOTE: torch warns, once per process, that a tensor over read-only memory could be
    written through. Received payloads are read-only by contract (`KVSink`), so that one
    warning is taken here, silenced, at import (on the importing thread) rather than
    mid-push: `warnings.catch_warnings` around each view would race with other threads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.frombuffer(b"\0", dtype=torch.uint8)


_take_torch_read_only_warning()
