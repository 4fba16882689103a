"""Settings of the KV transfer transport, shared by senders and receivers."""

from __future__ import annotations

from dataclasses import dataclass

from .compression import KVCompression

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class KVTransferConfig:
    max_chunk_bytes: int = 4 * _MIB
    """Largest payload of one chunk. 4 MiB makes per-message overhead noise next to the
    checksum and copies, stays far below gRPC's message limits, and lets several chunks sit
    in one HTTP/2 flow-control window so sending pipelines. 1, 2, 4 and 8 MiB measured
    within noise of each other (benchmarks/bench_kv_transfer.py, 2-CPU host)."""

    max_inflight_chunks: int = 8
    """Receiver: chunks read off a stream but not yet verified and written. Bounds receive
    memory per push to about this many times `max_chunk_bytes`; past it the receiver stops
    reading and gRPC's flow-control window pushes back on the sender."""

    max_concurrent_pushes: int = 64
    """Receiver: PushKV calls processed at once; more wait for a slot (their senders held
    back by flow control, bounded by their deadlines). Bounds receive memory and threads."""

    verify_in_thread: bool = False
    """Receiver: verify chunks on a worker thread instead of the event loop. Off by
    default: with verification down to the CRC32C (no copy) the hand-off buys nothing on a
    2-CPU host (about 1.1 GB/s either way); turn it on when the receiving loop must stay
    free during large transfers."""

    stats_history: int = 256
    """Finished transfers kept for `GetStats` (the router's measured-bandwidth input)."""

    compression: KVCompression = KVCompression.NONE
    """What a sender puts on the wire and the only thing a receiver accepts. NONE: exact.
    FP8: half the bytes of a bf16/fp16 cache, lossy (docs/benchmarks.md measures it); use
    it where the link, not compute, bounds time to first token."""

    def __post_init__(self) -> None:
        if not isinstance(self.compression, KVCompression):
            raise ValueError(f"compression must be a KVCompression, got {self.compression!r}")
        if not 1 <= self.max_chunk_bytes <= 1024 * _MIB:
            raise ValueError(
                f"max_chunk_bytes must be in [1, {1024 * _MIB}] (1 GiB), got {self.max_chunk_bytes}"
            )
        for name in ("max_inflight_chunks", "max_concurrent_pushes", "stats_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def grpc_message_limit(self) -> int:
        """gRPC send/receive message limit: a chunk plus room for its header (block
        positions, shape)."""
        return self.max_chunk_bytes + _MIB

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel and server options both sides need (a worker hosting KVTransfer on a
        shared server must pass these to `grpc.aio.server`)."""
        return [
            ("grpc.max_send_message_length", self.grpc_message_limit),
            ("grpc.max_receive_message_length", self.grpc_message_limit),
        ]
