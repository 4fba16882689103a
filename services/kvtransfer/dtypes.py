"""KV cache element types on the wire (`kvferry.v1.DType`) and in torch (FP8 payloads:
`compression`)."""

from __future__ import annotations

import sys

import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb

from .errors import TransferRejectedError

# NOTE: payloads are raw little-endian bytes; a big-endian host would need a byte swap.
if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("kvferry KV transfer assumes a little-endian host")

_TO_WIRE: dict[torch.dtype, pb.DType] = {
    torch.float32: pb.DTYPE_FLOAT32,
    torch.float16: pb.DTYPE_FLOAT16,
    torch.bfloat16: pb.DTYPE_BFLOAT16,
}
_FROM_WIRE: dict[int, torch.dtype] = {wire: dtype for dtype, wire in _TO_WIRE.items()}


def to_wire(dtype: torch.dtype) -> pb.DType:
    """The `DType` value for a torch dtype; ValueError for one the wire cannot carry."""
    wire = _TO_WIRE.get(dtype)
    if wire is None:
        raise ValueError(f"KV dtype {dtype} cannot be transferred; supported: {list(_TO_WIRE)}")
    return wire


def from_wire(wire: pb.DType | int) -> torch.dtype:
    """The torch dtype of a `DType` value; TransferRejectedError for an unsupported one."""
    dtype = _FROM_WIRE.get(wire)
    if dtype is None:
        name = pb.DType.Name(wire) if wire in pb.DType.values() else str(wire)
        raise TransferRejectedError(
            f"chunk dtype {name} is not supported as a KV cache dtype (FLOAT8_E4M3 travels"
            " only in FP8-compressed chunks; unset means a sender bug)"
        )
    return dtype
