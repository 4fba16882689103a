"""A prefill worker and a decode worker over real gRPC on 127.0.0.1, with this test as
the router: Admit -> Prefill (KV pushed layer by layer) -> Decode stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from kvferry import LLM, SamplingParams
from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.engine.config import EngineConfig
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.server import WorkerServer
from kvferry.wire import sampling_to_proto

ENGINE = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=64)
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
PROMPTS = [[256, *range(65, 65 + n)] for n in (1, 16, 40, 70)]
TIMEOUT = 20.0


class Cluster:
    def __init__(self, prefill: WorkerServer, decode: WorkerServer) -> None:
        self.prefill, self.decode = prefill, decode
        self.channels = [grpc.aio.insecure_channel(w.address) for w in (prefill, decode)]
        self.p = pb_grpc.WorkerStub(self.channels[0])
        self.d = pb_grpc.WorkerStub(self.channels[1])

    async def generate(
        self, rid: str, prompt: list[int], params: SamplingParams = GREEDY
    ) -> tuple[list[int], pb.PrefillResponse]:
        sampling = sampling_to_proto(params)
        admit = await self.d.Admit(
            pb.AdmitRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling),
            timeout=TIMEOUT,
        )
        prefill = await self.p.Prefill(
            pb.PrefillRequest(
                request_id=rid,
                prompt_token_ids=prompt,
                sampling=sampling,
                destination=pb.KVDestination(
                    kv_endpoint=admit.kv_endpoint,
                    needed_block_positions=admit.needed_block_positions,
                    kv_layout=admit.kv_layout,
                ),
            ),
            timeout=TIMEOUT,
        )
        tokens = await collect(self.d.Decode(pb.DecodeRequest(request_id=rid), timeout=TIMEOUT))
        assert tokens[0] == prefill.first_token_id
        return tokens, prefill

    async def free(self) -> None:
        for stub in (self.p, self.d):
            for _ in range(100):
                load = (await stub.GetStats(pb.WorkerStatsRequest(), timeout=TIMEOUT)).load
                if load.free_kv_blocks == load.total_kv_blocks and load.num_running == 0:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"blocks not freed: {load}")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.prefill.stop()
        await self.decode.stop()


async def collect(stream: AsyncIterator[gen_pb.GenerateResponse]) -> list[int]:
    tokens: list[int] = []
    async for msg in stream:
        tokens += msg.token_ids
    return tokens


def run(test: Callable[[Cluster], Awaitable[None]]) -> None:
    async def main() -> None:
        prefill = await WorkerServer.start(ENGINE, WorkerConfig(role="prefill"))
        decode = await WorkerServer.start(ENGINE, WorkerConfig(role="decode"))
        cluster = Cluster(prefill, decode)
        try:
            await test(cluster)
        finally:
            await cluster.close()

    asyncio.run(asyncio.wait_for(main(), timeout=120))


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    return [o.token_ids for o in LLM(model="tiny", max_model_len=256).generate(PROMPTS, GREEDY)]


def test_concurrent_disaggregated_requests_equal_the_offline_engine(
    reference: list[list[int]],
) -> None:
    async def test(cluster: Cluster) -> None:
        results = await asyncio.gather(
            *(cluster.generate(f"r{i}", p) for i, p in enumerate(PROMPTS))
        )
        assert [tokens for tokens, _ in results] == reference
        await cluster.free()

    run(test)


def test_a_shared_prefix_moves_only_the_missing_blocks() -> None:
    async def test(cluster: Cluster) -> None:
        layout = cluster.decode.engine.engine.cache_layout
        block_bytes = layout.bytes_per_block
        shared = [256, *range(1, 64)]  # 4 full blocks
        _, first = await cluster.generate("a", [*shared, 7, 8, 9])
        _, second = await cluster.generate("b", [*shared, 4, 5])
        assert first.kv_bytes_sent == 5 * block_bytes
        assert second.kv_bytes_sent == 1 * block_bytes
        assert second.num_cached_tokens == 64  # the prefill worker's own prefix cache
        await cluster.free()

    run(test)


def test_compute_prompt_fallback_and_errors() -> None:
    async def test(cluster: Cluster) -> None:
        prompt = PROMPTS[2]
        expected = LLM(model="tiny", max_model_len=256).generate([prompt], GREEDY)[0].token_ids
        sampling = sampling_to_proto(GREEDY)
        await cluster.d.Admit(
            pb.AdmitRequest(request_id="x", prompt_token_ids=prompt, sampling=sampling),
            timeout=TIMEOUT,
        )
        stream = cluster.d.Decode(pb.DecodeRequest(request_id="x", compute_prompt=True))
        assert await collect(stream) == expected

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(cluster.d.Decode(pb.DecodeRequest(request_id="nobody"), timeout=5))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        bad = gen_pb.SamplingOptions(top_p=0.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.d.Admit(
                pb.AdmitRequest(request_id="y", prompt_token_ids=prompt, sampling=bad), timeout=5
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "top_p" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.p.Prefill(
                pb.PrefillRequest(
                    request_id="z",
                    prompt_token_ids=prompt,
                    sampling=sampling,
                    destination=pb.KVDestination(kv_endpoint=cluster.decode.address),
                ),
                timeout=5,
            )
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        released = await cluster.d.Release(pb.ReleaseRequest(request_id="nobody"), timeout=5)
        assert not released.released
        await cluster.free()

    run(test)


def test_release_frees_an_admitted_request() -> None:
    async def test(cluster: Cluster) -> None:
        sampling = sampling_to_proto(GREEDY)
        await cluster.d.Admit(
            pb.AdmitRequest(request_id="r", prompt_token_ids=PROMPTS[3], sampling=sampling),
            timeout=TIMEOUT,
        )
        load = (await cluster.d.GetStats(pb.WorkerStatsRequest(), timeout=5)).load
        assert load.free_kv_blocks < load.total_kv_blocks
        assert (await cluster.d.Release(pb.ReleaseRequest(request_id="r"), timeout=5)).released
        await cluster.free()

    run(test)


def test_an_open_decode_call_keeps_its_admission_past_the_kv_wait_timeout() -> None:
    """The router opens Decode before a slow Prefill: the reservation must not expire
    while Decode is waiting for the KV."""

    async def test(cluster: Cluster) -> None:
        prompt = PROMPTS[3]
        expected = LLM(model="tiny", max_model_len=256).generate([prompt], GREEDY)[0].token_ids
        sampling = sampling_to_proto(GREEDY)
        admit = await cluster.d.Admit(
            pb.AdmitRequest(
                request_id="slow",
                prompt_token_ids=prompt,
                sampling=sampling,
                kv_wait_timeout_ms=200,
            ),
            timeout=TIMEOUT,
        )
        decode = asyncio.create_task(
            collect(cluster.d.Decode(pb.DecodeRequest(request_id="slow"), timeout=TIMEOUT))
        )
        await asyncio.sleep(0.6)  # three times the wait timeout
        await cluster.p.Prefill(
            pb.PrefillRequest(
                request_id="slow",
                prompt_token_ids=prompt,
                sampling=sampling,
                destination=pb.KVDestination(
                    kv_endpoint=admit.kv_endpoint,
                    needed_block_positions=admit.needed_block_positions,
                    kv_layout=admit.kv_layout,
                ),
            ),
            timeout=TIMEOUT,
        )
        assert await decode == expected
        await cluster.free()

    run(test)


def test_get_stats_reports_numbered_prefix_cache_events() -> None:
    async def test(cluster: Cluster) -> None:
        shared = [256, *range(1, 64)]  # 4 full blocks
        await cluster.generate("e1", [*shared, 7, 8, 9])
        stats = await cluster.d.GetStats(pb.WorkerStatsRequest(), timeout=TIMEOUT)
        stored = [h for e in stats.events if e.HasField("stored") for h in e.stored.block_hashes]
        assert len(stored) >= 4  # the prompt's full blocks became reusable prefix KV
        seqs = [e.seq for e in stats.events]
        assert seqs == list(range(1, len(seqs) + 1)) and stats.last_event_seq == seqs[-1]
        assert not stats.events_truncated
        later = await cluster.d.GetStats(
            pb.WorkerStatsRequest(since_event_seq=stats.last_event_seq), timeout=TIMEOUT
        )
        assert list(later.events) == [] and later.last_event_seq == stats.last_event_seq
        await cluster.free()

    run(test)
