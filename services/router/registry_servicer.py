"""The Registry gRPC service: workers register and heartbeat; a thin adapter over
`Registry`. The clock is injected (tests), defaulting to the monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.engine.block_hash import HASH_SCHEME_VERSION

from .registry import DuplicateWorkerError, Registry, UnknownWorkerError
from .workers import Role, WorkerId, WorkerInfo, WorkerLoad

ROLE_FROM_PROTO = {
    gen_pb.WORKER_ROLE_PREFILL: Role.PREFILL,
    gen_pb.WORKER_ROLE_DECODE: Role.DECODE,
    gen_pb.WORKER_ROLE_MIXED: Role.MIXED,
}
ROLE_TO_PROTO = {v: k for k, v in ROLE_FROM_PROTO.items()}


def load_from_proto(load: gen_pb.WorkerLoad) -> WorkerLoad:
    return WorkerLoad(
        num_waiting=load.num_waiting,
        num_running=load.num_running,
        prefill_tokens_waiting=load.prefill_tokens_waiting,
        free_kv_blocks=load.free_kv_blocks,
        total_kv_blocks=load.total_kv_blocks,
    )


_DTYPE_BYTES = {
    kv_pb.DTYPE_FLOAT32: 4,
    kv_pb.DTYPE_FLOAT16: 2,
    kv_pb.DTYPE_BFLOAT16: 2,
    kv_pb.DTYPE_FLOAT8_E4M3: 1,
}


def kv_bytes_per_block(layout: kv_pb.KVLayout) -> int:
    """What one block's K and V across all layers put on the wire, in bytes (0 when the
    layout is unset). FP8 sends one byte per element plus a float32 scale per (layer, K/V,
    head): placement's transfer estimate counts what moves, and two workers whose
    compression differs (they cannot pair) never have equal figures."""
    heads = 2 * layout.num_layers * layout.num_kv_heads
    if layout.compression == kv_pb.KV_COMPRESSION_FP8_E4M3:
        return heads * (layout.block_size * layout.head_dim + 4) if layout.dtype else 0
    itemsize = _DTYPE_BYTES.get(layout.dtype, 0)
    return heads * layout.block_size * layout.head_dim * itemsize


class RegistryServicer(pb_grpc.RegistryServicer):
    def __init__(
        self,
        registry: Registry,
        *,
        heartbeat_interval_s: float = 2.0,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.heartbeat_interval_s = heartbeat_interval_s
        self.model = model
        """The model this router serves; workers of another model are refused."""
        self.clock = clock

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterResponse:
        role = ROLE_FROM_PROTO.get(request.role)
        if role is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "role must be set")
            raise AssertionError("unreachable")
        if request.block_hash_scheme != HASH_SCHEME_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker uses block-hash scheme {request.block_hash_scheme}, the router"
                f" {HASH_SCHEME_VERSION}: upgrade them together",
            )
        if self.model is not None and request.model != self.model:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker {request.worker_id!r} serves model {request.model!r}; this router"
                f" serves {self.model!r}: start both with the same --model",
            )
        try:
            info = WorkerInfo(
                WorkerId(request.worker_id),
                role,
                request.address,
                request.kv_endpoint,
                request.model,
                dict(request.labels),
                request.capacity.max_model_len,
                block_size=request.capacity.kv_layout.block_size,
                kv_bytes_per_block=kv_bytes_per_block(request.capacity.kv_layout),
                topology_source=request.topology_source,
                topology_detail=request.topology_detail,
                incarnation=request.incarnation,
            )
            self.registry.register(info, load_from_proto(request.load), self.clock())
        except DuplicateWorkerError as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return pb.RegisterResponse(heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000))

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        try:
            self.registry.heartbeat(
                WorkerId(request.worker_id),
                load_from_proto(request.load),
                self.clock(),
                draining=request.draining,
            )
        except UnknownWorkerError:
            return pb.HeartbeatResponse(must_register=True)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return pb.HeartbeatResponse(must_register=False)
