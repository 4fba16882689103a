"""The router's worker channels take a prefix-cache snapshot larger than gRPC's default
4 MiB message limit (a worker with a big KV cache and small blocks)."""

from __future__ import annotations

import asyncio

import grpc

from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.router.worker_clients import WorkerClients

BLOCKS = 600_000  # 10-byte varints (64-bit hashes): ~6 MB


class _BigSnapshot(pb_grpc.WorkerServicer):
    async def GetStats(
        self, request: pb.WorkerStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerStats:
        stats = pb.WorkerStats(has_snapshot=True)
        stats.cached_block_hashes.extend(range(1 << 63, (1 << 63) + BLOCKS))
        return stats


def test_a_snapshot_over_four_mib_arrives() -> None:
    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_WorkerServicer_to_server(_BigSnapshot(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        clients = WorkerClients()
        try:
            stub = clients.stub(f"127.0.0.1:{port}")
            stats = await stub.GetStats(pb.WorkerStatsRequest(include_snapshot=True), timeout=20)
            assert stats.ByteSize() > 4 * 1024 * 1024
            assert len(stats.cached_block_hashes) == BLOCKS
            assert stats.cached_block_hashes[-1] == (1 << 63) + BLOCKS - 1
        finally:
            await clients.close_all()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), timeout=60))
