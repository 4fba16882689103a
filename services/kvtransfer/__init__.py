"""Moving KV-cache blocks between workers (gRPC first; faster paths later).

A transfer, from the prefill worker's side:

1. The decode worker admitted the request and named the block positions it needs and its
   KV endpoint (`Worker.Admit`).
2. As layers finish, the prefill worker hands `KVSlab`s (some layers of the needed blocks)
   to a `KVSender.push`; the sender splits them into checksummed chunks of at most
   `max_chunk_bytes` and streams them in one `KVTransfer.PushKV` call. The last message
   carries the first sampled token when the push completes the request.
3. The receiver verifies every chunk (CRC32C, dtype, shape against payload length) and
   writes it through its `KVSink` (the decode engine's cache). A chunk that fails
   verification is dropped and named in the answer; the sender resends those chunks once,
   then gives up with a TransferError.
4. With every chunk in, the receiver calls `KVSink.complete(request_id, first_token_id)`
   and the request joins the decode batch.

Transports are picked by `TransportKind` through `make_sender`; `LoopbackTransport` runs
the same path in-process for tests.
"""

from .chunking import DEFAULT_MAX_CHUNK_BYTES, assemble, crc32c, end_chunk, split_slab
from .config import KVTransferConfig
from .errors import (
    ChunkCorruptError,
    ChunkTooLargeError,
    MalformedPushError,
    ReceiverUnavailableError,
    TransferRejectedError,
    TransferTimeoutError,
    UnknownRequestError,
)
from .factory import TransportKind, make_sender
from .faults import FaultPlan
from .grpc_sender import GrpcKVSender
from .loopback import LoopbackTransport
from .protocols import KVSender, KVSink
from .push_result import PushResult, PushStatus
from .receiver import PushReceiver
from .server import KVTransferServer
from .servicer import KVTransferServicer
from .slab import KVSlab
from .stats import TransferDirection, TransferLog, TransferStats
from .wire_chunk import WireChunk

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "ChunkCorruptError",
    "ChunkTooLargeError",
    "FaultPlan",
    "GrpcKVSender",
    "KVSender",
    "KVSink",
    "KVSlab",
    "KVTransferConfig",
    "KVTransferServer",
    "KVTransferServicer",
    "LoopbackTransport",
    "MalformedPushError",
    "PushReceiver",
    "PushResult",
    "PushStatus",
    "ReceiverUnavailableError",
    "TransferDirection",
    "TransferLog",
    "TransferRejectedError",
    "TransferStats",
    "TransferTimeoutError",
    "TransportKind",
    "UnknownRequestError",
    "WireChunk",
    "assemble",
    "crc32c",
    "end_chunk",
    "make_sender",
    "split_slab",
]
