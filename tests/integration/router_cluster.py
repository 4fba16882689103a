"""A router and registered workers in this process, over real gRPC sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.sampling_params import SamplingParams
from kvferry.services.engine.config import EngineConfig
from kvferry.services.kvtransfer.faults import FaultPlan
from kvferry.services.router.config import RouterConfig
from kvferry.services.router.server import RouterServer
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.server import WorkerServer
from kvferry.wire import sampling_to_proto

ENGINE = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=96)
ROUTER = RouterConfig(port=0, short_prompt_tokens=16, heartbeat_interval_s=0.3, worker_ttl_s=3.0)
TIMEOUT = 30.0


@dataclass
class RouterCluster:
    router: RouterServer
    workers: list[WorkerServer]
    channel: grpc.aio.Channel
    stub: gen_grpc.GenerationStub

    def role(self, role: str) -> list[WorkerServer]:
        return [w for w in self.workers if w.servicer.config.role == role]

    async def generate(
        self,
        prompt: Sequence[int] | str,
        params: SamplingParams,
        *,
        request_id: str = "",
        timeout: float = TIMEOUT,
    ) -> list[gen_pb.GenerateResponse]:
        return [
            m async for m in self.stream(prompt, params, request_id=request_id, timeout=timeout)
        ]

    def stream(
        self,
        prompt: Sequence[int] | str,
        params: SamplingParams,
        *,
        request_id: str = "",
        timeout: float = TIMEOUT,
    ) -> grpc.aio.UnaryStreamCall:
        request = gen_pb.GenerateRequest(request_id=request_id, sampling=sampling_to_proto(params))
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        return self.stub.Generate(request, timeout=timeout)

    async def all_blocks_free(self) -> None:
        """Every worker's pool is back to its initial free count and the router counts
        nothing in flight on any worker (bounded waits)."""
        for worker in self.workers:
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.WorkerStub(channel)
                for _ in range(200):
                    load = (await stub.GetStats(pb.WorkerStatsRequest(), timeout=5)).load
                    if load.free_kv_blocks == load.total_kv_blocks and load.num_running == 0:
                        break
                    await asyncio.sleep(0.025)
                else:
                    wid = worker.servicer.config.worker_id
                    raise AssertionError(f"{wid} keeps blocks: {load}")
        # ...and the router's own counts of what it placed are back to zero (no leak)
        for _ in range(200):
            counts = {
                r.info.worker_id: (r.in_flight, r.in_flight_prefill_tokens)
                for r in self.router.registry.records()
            }
            if all(c == (0, 0) for c in counts.values()):
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"the router still counts requests on workers: {counts}")


def tokens_of(messages: Sequence[gen_pb.GenerateResponse]) -> list[int]:
    return [t for m in messages for t in m.token_ids]


async def wait_registered(router: RouterServer, n: int) -> None:
    for _ in range(400):
        if len(router.registry.records()) >= n:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{len(router.registry.records())} of {n} workers registered")


async def _start_cluster(
    roles: Sequence[str],
    router_config: RouterConfig,
    engine: EngineConfig,
    faults: dict[str, FaultPlan],
    labels: Sequence[dict[str, str]] = (),
) -> RouterCluster:
    router = await RouterServer.start(router_config)
    workers = []
    for i, role in enumerate(roles):
        config = WorkerConfig(
            role=role,
            router=router.registry_address,
            worker_id=f"{role}-{i}",
            labels=labels[i] if labels else {},
        )
        workers.append(
            await WorkerServer.start(engine, config, kv_faults=faults.get(config.worker_id))
        )
    await wait_registered(router, len(workers))
    channel = grpc.aio.insecure_channel(router.address)
    return RouterCluster(router, workers, channel, gen_grpc.GenerationStub(channel))


def run_cluster(
    test: Callable[[RouterCluster], Awaitable[None]],
    roles: Sequence[str] = ("prefill", "decode"),
    *,
    router: RouterConfig = ROUTER,
    engine: EngineConfig = ENGINE,
    faults: dict[str, FaultPlan] | None = None,
    timeout_s: float = 120.0,
    labels: Sequence[dict[str, str]] = (),
) -> None:
    """`labels`: each worker's topology labels, in the order of `roles`."""

    async def main() -> None:
        cluster = await _start_cluster(roles, router, engine, faults or {}, labels)
        try:
            await test(cluster)
        finally:
            await cluster.channel.close()
            await cluster.router.stop(0.5)
            for worker in cluster.workers:
                await worker.stop(0.5)

    asyncio.run(asyncio.wait_for(main(), timeout=timeout_s))


def router_config(**changes: object) -> RouterConfig:
    return replace(ROUTER, **changes)  # type: ignore[arg-type]


async def drain(stream: AsyncIterator[gen_pb.GenerateResponse]) -> list[gen_pb.GenerateResponse]:
    return [m async for m in stream]
