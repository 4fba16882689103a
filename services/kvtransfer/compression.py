"""KV compression on the wire: the setting (`--kv-compression`), and the codec that turns a
slab into what the wire carries and back.

FP8 (e4m3) keeps one float32 scale per (layer, K/V, block, KV head) and halves the bytes of
a bf16/fp16 cache (quarters a float32 one). It is lossy: the relative error of an element is
at most 2^-4, and the measured effect on logits and greedy tokens is in
docs/benchmarks.md ("KV transfer in FP8"). Uncompressed transfers stay bit-exact.

The codec runs the Triton kernels (`kvferry.kernels.kv_pack`) on CUDA tensors when the
worker was configured with them, and the torch reference (`kv_pack_ref`) otherwise: an
explicit choice made once at start-up, never an environment flag.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry.kernels import kv_pack_ref

from .errors import TransferRejectedError
from .slab import KVSlab


class KVCompression(enum.Enum):
    """How KV travels (`KVTransferConfig.compression`, the worker's `--kv-compression`)."""

    NONE = "none"
    """The cache's own elements, bit for bit."""
    FP8 = "fp8"
    """FP8 e4m3 with a float32 scale per (layer, K/V, block, KV head)."""

    @property
    def wire(self) -> pb.KVCompression:
        return _TO_WIRE[self]

    @classmethod
    def from_wire(cls, value: int) -> KVCompression:
        """TransferRejectedError for a value this build does not know."""
        for member, wire in _TO_WIRE.items():
            if wire == value:
                return member
        raise TransferRejectedError(f"unknown KV compression {value} (a newer sender?)")


_TO_WIRE = {
    KVCompression.NONE: pb.KV_COMPRESSION_NONE,
    KVCompression.FP8: pb.KV_COMPRESSION_FP8_E4M3,
}


class PackBackend(enum.Enum):
    """Which implementation packs and converts KV on the way out and in."""

    TORCH = "torch"
    """`kvferry.kernels.kv_pack_ref`: any device."""
    TRITON = "triton"
    """`kvferry.kernels.kv_pack` for tensors on a CUDA device (one launch per slab); the
    torch reference for CPU tensors."""


@dataclass(frozen=True, slots=True)
class KVCodec:
    compression: KVCompression = KVCompression.NONE
    backend: PackBackend = PackBackend.TORCH

    def encode(self, slab: KVSlab) -> KVSlab:
        """The slab as it goes on the wire, on the slab's device (so a GPU slab crosses to
        the host already compressed). Uncompressed: `slab` itself."""
        if slab.scales is not None:
            raise ValueError(f"slab of {slab.request_id!r} is already compressed")
        if self.compression is KVCompression.NONE:
            return slab
        data = slab.data.contiguous()  # [L, 2, n, BS, Hkv, D]
        if self._kernels(data):
            from kvferry.kernels import kv_pack  # NOTE: triton only where configured

            # the slab is already gathered: pack its blocks 0..n-1 of each layer's view
            ids = torch.arange(data.shape[2], device=data.device)
            q, scales = kv_pack.pack_kv_blocks_fp8(list(data.unbind(0)), ids)
        else:
            q, scales = kv_pack_ref.quantize_fp8(data)
        return KVSlab(
            slab.request_id, slab.layer_start, slab.layer_end, slab.block_positions, q, scales
        )

    def decode(self, slab: KVSlab, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A received slab's KV as `dtype` on `device`, `[L, 2, n, BS, Hkv, D]`. An
        uncompressed slab's data is returned as it is (the cache write casts and moves it,
        bit-exact); a compressed one crosses to `device` before it is expanded."""
        if slab.scales is None:
            return slab.data
        q = slab.data.to(device)
        scales = slab.scales.to(device)
        if not self._kernels(q):
            expanded: torch.Tensor = kv_pack_ref.dequantize_fp8(q, scales, dtype)
            return expanded
        from kvferry.kernels import kv_pack

        out = torch.empty(q.shape, dtype=dtype, device=device)
        ids = torch.arange(q.shape[2], device=device)
        kv_pack.unpack_kv_blocks_fp8(q, scales, list(out.unbind(0)), ids)
        return out

    def _kernels(self, tensor: torch.Tensor) -> bool:
        return self.backend is PackBackend.TRITON and tensor.device.type == "cuda"
