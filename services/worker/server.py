"""A worker process's gRPC server: Worker and KVTransfer services on one port, plus the
standard health service and server reflection.

    server = await WorkerServer.start(EngineConfig(model="tiny"), WorkerConfig(role="decode"))
    server.address        # host:port (the KV endpoint too)
    await server.stop()
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import kvtransfer_pb2, worker_pb2, worker_pb2_grpc
from kvferry.services.engine.async_engine import AsyncEngine, EngineDeadError
from kvferry.services.engine.attention import AttentionBackend
from kvferry.services.engine.block_hash import HASH_SCHEME_VERSION
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.engine import LLMEngine
from kvferry.services.kvtransfer.compression import KVCodec, KVCompression, PackBackend
from kvferry.services.kvtransfer.config import KVTransferConfig
from kvferry.services.kvtransfer.factory import TransportKind, make_sender
from kvferry.services.kvtransfer.faults import FaultPlan
from kvferry.services.kvtransfer.protocols import KVSender
from kvferry.services.kvtransfer.sender import ChunkSender
from kvferry.services.kvtransfer.servicer import KVTransferServicer
from kvferry.services.router.registry_servicer import ROLE_TO_PROTO
from kvferry.services.router.workers import Role

from .config import WorkerConfig
from .convert import load_to_proto
from .kv_sink import Admitted, EngineKVSink
from .registration import Registration
from .servicer import WorkerServicer
from .topology_discovery import TopologyDiscovery

log = logging.getLogger(__name__)


class WorkerServer:
    def __init__(
        self,
        server: grpc.aio.Server,
        engine: AsyncEngine,
        servicer: WorkerServicer,
        sender: KVSender,
        address: str,
        registration: Registration | None,
        events_task: asyncio.Task[None],
    ) -> None:
        self.server = server
        self.engine = engine
        self.servicer = servicer
        self.sender = sender
        self.address = address
        self.registration = registration
        self.events_task = events_task

    @classmethod
    async def start(
        cls,
        engine_config: EngineConfig,
        config: WorkerConfig,
        *,
        kv_config: KVTransferConfig | None = None,
        reflection_enabled: bool = True,
        kv_faults: FaultPlan | None = None,
    ) -> WorkerServer:
        """`kv_faults` corrupts outgoing KV chunks on purpose (tests of the checksum path).
        `kv_config`, when given, must carry `config.kv_compression`."""
        compression = KVCompression(config.kv_compression)
        kv_config = kv_config or KVTransferConfig(
            max_chunk_bytes=config.kv_max_chunk_bytes, compression=compression
        )
        if kv_config.compression is not compression:
            raise ValueError(
                f"kv_config.compression {kv_config.compression.value!r} contradicts the"
                f" worker's kv_compression {config.kv_compression!r}"
            )
        llm_engine = await asyncio.to_thread(LLMEngine, engine_config)
        # NOTE: KV is packed and compressed with the kernels the engine's attention uses.
        pack = (
            PackBackend.TRITON
            if llm_engine.attention_backend is AttentionBackend.TRITON
            else PackBackend.TORCH
        )
        engine = AsyncEngine(llm_engine, max_pending=config.max_pending)
        server = grpc.aio.server(options=kv_config.grpc_options())
        port = server.add_insecure_port(f"{config.host}:{config.port}")
        if port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")
        address = f"{config.host}:{port}"
        config = replace(
            config, port=port, worker_id=config.worker_id or f"{config.role}-{address}"
        )
        admitted: dict[str, Admitted] = {}
        sink = EngineKVSink(
            engine,
            llm_engine.cache_layout,
            admitted,
            asyncio.get_running_loop(),
            KVCodec(kv_config.compression, pack),
        )
        sender = make_sender(TransportKind.GRPC, kv_config, faults=kv_faults, pack_backend=pack)
        servicer = WorkerServicer(engine, sender, config, address, admitted)
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        receiver = KVTransferServicer(sink, kv_config)
        receiver.add_to_server(server)  # zero-copy payload decode
        servicer.transfer_logs = [receiver.transfers]
        if isinstance(sender, ChunkSender):
            servicer.transfer_logs.append(sender.transfers)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [
            worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name,
            kvtransfer_pb2.DESCRIPTOR.services_by_name["KVTransfer"].full_name,
            health.SERVICE_NAME,
        ]
        if reflection_enabled:
            reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        engine.start()
        await server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "worker serving: worker_id=%s role=%s address=%s",
            config.worker_id,
            config.role,
            address,
        )
        events = asyncio.create_task(_collect_kv_events(servicer), name="kvferry-kv-events")
        registration = None
        if config.router:
            registration = _registration(config, servicer, engine, address)
            registration.start()
        return cls(server, engine, servicer, sender, address, registration, events)

    async def stop(self, grace_s: float = 1.0) -> None:
        self.events_task.cancel()
        if self.registration is not None:
            await self.registration.stop()
        await self.server.stop(grace_s)
        await self.sender.close()
        await self.engine.shutdown()


async def _collect_kv_events(servicer: WorkerServicer, interval_s: float = 0.5) -> None:
    """Keep the engine's event list short even when nobody asks for stats."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await servicer.collect_kv_events()
        except EngineDeadError:
            return


def _registration(
    config: WorkerConfig, servicer: WorkerServicer, engine: AsyncEngine, address: str
) -> Registration:
    llm = engine.engine
    topology = TopologyDiscovery.start(config, llm.device)

    async def load() -> gen_pb.WorkerLoad:
        return load_to_proto(await engine.stats())

    async def announce() -> worker_pb2.RegisterRequest:
        return worker_pb2.RegisterRequest(
            worker_id=config.worker_id,
            role=ROLE_TO_PROTO[Role(config.role)],
            address=address,
            kv_endpoint=address if config.role != "prefill" else "",
            model=llm.config.model,
            capacity=worker_pb2.WorkerCapacity(
                total_kv_blocks=llm.cache_layout.num_blocks,
                max_num_seqs=llm.config.max_num_seqs,
                max_model_len=llm.max_model_len,
                kv_layout=servicer.layout_proto,
            ),
            block_hash_scheme=HASH_SCHEME_VERSION,
            load=await load(),
            incarnation=servicer.incarnation,
            labels=topology.current.labels,
            topology_source=topology.current.source,
            topology_detail=topology.current.detail,
        )

    return Registration(
        config.router,
        announce,
        load,
        lambda: servicer.draining,
        refresh=topology.refresh_async,
        interval_s=config.heartbeat_interval_s,
    )
