"""Pick a KV transport by kind (one factory, so roles never name a backend class)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .compression import PackBackend
from .config import KVTransferConfig
from .faults import FaultPlan
from .grpc_sender import GrpcKVSender
from .loopback import LoopbackTransport
from .protocols import KVSender, KVSink


class TransportKind(enum.Enum):
    GRPC = "grpc"
    """Client-streaming PushKV over HTTP/2 (works across hosts)."""
    LOOPBACK = "loopback"
    """In-process delivery to bound sinks (tests; same verification as gRPC)."""


def make_sender(
    kind: TransportKind,
    config: KVTransferConfig | None = None,
    *,
    faults: FaultPlan | None = None,
    loopback_sinks: Mapping[str, KVSink] | None = None,
    pack_backend: PackBackend = PackBackend.TORCH,
) -> KVSender:
    """A sender of `kind`. `loopback_sinks` (endpoint -> sink) is for LOOPBACK only;
    `pack_backend` compresses slabs (with `config.compression`) on their device."""
    if kind is TransportKind.GRPC:
        if loopback_sinks:
            raise ValueError("loopback_sinks only applies to TransportKind.LOOPBACK")
        return GrpcKVSender(config, faults=faults, pack_backend=pack_backend)
    if kind is TransportKind.LOOPBACK:
        return LoopbackTransport(loopback_sinks, config, faults=faults, pack_backend=pack_backend)
    raise ValueError(f"unknown transport kind {kind!r}")
