"""A worker registers with the router's Registry over gRPC, heartbeats its load, and
registers again after the router forgets it (a router restart)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.engine.config import EngineConfig
from kvferry.services.router.registry import Registry
from kvferry.services.router.registry_servicer import RegistryServicer
from kvferry.services.router.workers import Role
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.server import WorkerServer


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_register_heartbeat_and_reregister_after_router_restart() -> None:
    async def main() -> None:
        servicer = RegistryServicer(Registry(), heartbeat_interval_s=0.05)
        router = grpc.aio.server()
        pb_grpc.add_RegistryServicer_to_server(servicer, router)  # type: ignore[no-untyped-call]
        port = router.add_insecure_port("127.0.0.1:0")
        await router.start()
        worker = await WorkerServer.start(
            EngineConfig(model="tiny", num_kv_blocks=32),
            WorkerConfig(role="decode", router=f"127.0.0.1:{port}", worker_id="d0"),
        )
        try:
            await eventually(lambda: len(servicer.registry.records()) == 1)
            (record,) = servicer.registry.records()
            assert record.info.role is Role.DECODE
            assert record.info.kv_endpoint == worker.address
            assert record.load.total_kv_blocks == 32
            first_seen = record.last_seen
            await eventually(lambda: record.last_seen > first_seen)  # heartbeats arrive

            servicer.registry = Registry()  # the router restarted and knows nobody
            await eventually(lambda: len(servicer.registry.records()) == 1)
            assert servicer.registry.records()[0].info.worker_id == "d0"
        finally:
            await worker.stop()
            await router.stop(0)

    asyncio.run(asyncio.wait_for(main(), timeout=60))
