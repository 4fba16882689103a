"""The router's Generation service in front of real workers, over gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from kvferry import LLM, AsyncClient, SamplingParams
from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.errors import UnauthenticatedError, UnavailableError
from kvferry.services.kvtransfer.faults import FaultPlan
from tests.tls_certs import write_self_signed

from .router_cluster import ENGINE, RouterCluster, router_config, run_cluster, tokens_of

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
# Short prompts (<= 16 tokens) run whole on the decode worker; longer ones go through the
# prefill worker and a KV push.
PROMPTS = [
    [256, *((7 * i + j) % 256 for j in range(n))]
    for i, n in enumerate([1, 5, 12, 16, 17, 20, 31, 32, 33, 40, 47, 64, 65, 80, 100, 130])
]


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    llm = LLM(model="tiny", max_model_len=ENGINE.max_model_len)
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_sixteen_concurrent_requests_equal_the_offline_engine(
    reference: list[list[int]],
) -> None:
    async def test(cluster: RouterCluster) -> None:
        results = await asyncio.gather(*(cluster.generate(p, GREEDY) for p in PROMPTS))
        assert [tokens_of(r) for r in results] == reference
        for messages, prompt in zip(results, PROMPTS, strict=True):
            last = messages[-1]
            assert last.finish_reason == gen_pb.FINISH_REASON_LENGTH
            assert last.usage.prompt_tokens == len(prompt)
            assert last.usage.completion_tokens == GREEDY.max_tokens
            assert messages[0].timing.ttft_s > 0
            assert last.timing.e2e_s >= messages[0].timing.ttft_s
            assert len({m.request_id for m in messages}) == 1
        prefill = cluster.role("prefill")[0]
        assert (await prefill.engine.stats()).cached_blocks > 0  # long prompts went there
        await cluster.all_blocks_free()

    run_cluster(test)


def test_text_prompts_stream_text(reference: list[list[int]]) -> None:
    async def test(cluster: RouterCluster) -> None:
        offline = LLM(model="tiny", max_model_len=ENGINE.max_model_len)
        for prompt in ("hi", "a longer prompt that takes the prefill hop, surely"):
            messages = await cluster.generate(prompt, GREEDY)
            want = offline.generate([prompt], GREEDY)[0]
            assert tokens_of(messages) == want.token_ids
            assert "".join(m.text for m in messages) == want.text
        await cluster.all_blocks_free()

    run_cluster(test)


def _bad(**kwargs: object) -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (_bad(), "empty"),
        (_bad(text=""), "empty"),
        (_bad(token_ids=gen_pb.TokenIds()), "empty"),
        (_bad(text="x" * 300), "context"),
        (_bad(text="hi", sampling=gen_pb.SamplingOptions(top_p=0.0)), "top_p"),
        (_bad(text="hi", sampling=gen_pb.SamplingOptions(temperature=-1)), "temperature"),
        (_bad(text="hi", sampling=gen_pb.SamplingOptions(max_tokens=0)), "max_tokens"),
        (_bad(text="hi", model="gpt-9"), "unknown model"),
        (_bad(token_ids=gen_pb.TokenIds(ids=[256, 99999])), "vocab"),
    ],
)
def test_bad_requests_are_invalid_argument(request_: gen_pb.GenerateRequest, needle: str) -> None:
    async def test(cluster: RouterCluster) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in cluster.stub.Generate(request_, timeout=10):
                pass
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert needle in (err.value.details() or ""), err.value.details()
        await cluster.all_blocks_free()

    run_cluster(test, ("mixed",))


def test_invalid_utf8_is_invalid_argument() -> None:
    async def test(cluster: RouterCluster) -> None:
        raw = cluster.channel.unary_stream(
            "/kvferry.v1.Generation/Generate",
            request_serializer=lambda b: b,
            response_deserializer=gen_pb.GenerateResponse.FromString,
        )
        body = b"\x1a\x03\xff\xfe\xfd"  # field 3 (text), 3 bytes that are not UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in raw(body, timeout=10):
                pass
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "malformed" in (err.value.details() or "")

    run_cluster(test, ("mixed",))


def test_more_requests_than_the_router_holds_are_resource_exhausted() -> None:
    async def test(cluster: RouterCluster) -> None:
        slow = SamplingParams(max_tokens=150, temperature=0.0, ignore_eos=True)
        first = cluster.stream([256, 1, 2], slow)
        await first.read()  # running now
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.generate([256, 3], GREEDY)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_in_flight" in (err.value.details() or "")
        first.cancel()
        await cluster.all_blocks_free()

    run_cluster(test, ("mixed",), router=router_config(max_in_flight=1))


def test_client_cancellation_frees_every_block() -> None:
    async def test(cluster: RouterCluster) -> None:
        slow = SamplingParams(max_tokens=150, temperature=0.0, ignore_eos=True)
        calls = [cluster.stream(p, slow) for p in PROMPTS[10:14]]  # prefill hop + decode
        for call in calls:
            assert (await call.read()).token_ids
        for call in calls:
            call.cancel()
        await cluster.all_blocks_free()
        assert cluster.router.generation.num_running == 0

    run_cluster(test)


def test_abort_ends_the_stream_with_abort() -> None:
    async def test(cluster: RouterCluster) -> None:
        slow = SamplingParams(max_tokens=150, temperature=0.0, ignore_eos=True)
        call = cluster.stream(PROMPTS[12], slow, request_id="mine")
        assert (await call.read()).token_ids
        reply = await cluster.stub.Abort(gen_pb.AbortRequest(request_id="mine"), timeout=5)
        assert reply.aborted
        rest = []
        while (message := await call.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert rest[-1].finish_reason == gen_pb.FINISH_REASON_ABORT
        again = await cluster.stub.Abort(gen_pb.AbortRequest(request_id="mine"), timeout=5)
        assert not again.aborted
        await cluster.all_blocks_free()

    run_cluster(test)


def test_list_models_and_cluster_status() -> None:
    async def test(cluster: RouterCluster) -> None:
        models = await cluster.stub.ListModels(gen_pb.ListModelsRequest(), timeout=5)
        (model,) = models.models
        assert (model.name, model.max_model_len) == ("tiny", 256)
        assert (model.prefill_workers, model.decode_workers) == (1, 1)
        status = await cluster.stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=5)
        roles = sorted(w.role for w in status.workers)
        assert roles == [gen_pb.WORKER_ROLE_PREFILL, gen_pb.WORKER_ROLE_DECODE]
        assert all(w.load.total_kv_blocks == ENGINE.num_kv_blocks for w in status.workers)

    run_cluster(test)


def test_no_decode_worker_is_unavailable() -> None:
    async def test(cluster: RouterCluster) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.generate(PROMPTS[12], GREEDY)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "decode" in (err.value.details() or "")

    run_cluster(test, ("prefill",))


def test_a_shared_prefix_moves_only_the_blocks_the_decode_worker_lacks() -> None:
    async def test(cluster: RouterCluster) -> None:
        prefill = cluster.role("prefill")[0]
        block_bytes = prefill.engine.engine.cache_layout.bytes_per_block
        shared = [256, *range(1, 64)]  # 4 full blocks of 16
        await cluster.generate([*shared, 7, 8, 9], GREEDY)
        await cluster.generate([*shared, 4, 5], GREEDY)
        async with grpc.aio.insecure_channel(prefill.address) as channel:
            stats = await pb_grpc.WorkerStub(channel).GetStats(pb.WorkerStatsRequest(), timeout=5)
        sends = [t for t in stats.recent_transfers if t.direction == kv_pb.TRANSFER_DIRECTION_SEND]
        data = [t.bytes for t in sends if t.bytes]  # the first-token pushes carry no KV
        assert data == [5 * block_bytes, 1 * block_bytes]
        await cluster.all_blocks_free()

    run_cluster(test)


@pytest.mark.parametrize("corrupt_resends", [False, True])
def test_a_corrupted_kv_chunk_is_caught_and_recovered(
    corrupt_resends: bool, reference: list[list[int]]
) -> None:
    """First the chunk is resent; when the resend is corrupted too the prefill fails and
    the decode worker computes the prompt itself. Either way the tokens are exact."""

    async def test(cluster: RouterCluster) -> None:
        long = [i for i, p in enumerate(PROMPTS) if len(p) > 16]
        results = [await cluster.generate(PROMPTS[i], GREEDY) for i in long[:3]]
        assert [tokens_of(r) for r in results] == [reference[i] for i in long[:3]]
        transfers = []
        for worker in cluster.workers:
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.WorkerStub(channel)
                stats = await stub.GetStats(pb.WorkerStatsRequest(), timeout=5)
                transfers += stats.recent_transfers
        sends = [t for t in transfers if t.direction == kv_pb.TRANSFER_DIRECTION_SEND]
        corrupt = [t for t in transfers if t.status == kv_pb.PUSH_STATUS_CORRUPT]
        assert len(cluster.router.registry.records()) == 2  # nobody was dropped
        if corrupt_resends:  # caught twice; the prefill gave up, the decode side recomputed
            assert len(corrupt) >= 2 and len({t.request_id for t in corrupt}) < len(corrupt)
        else:  # caught once, resent, then fine
            assert sum(t.resent_chunks for t in sends) >= 1
            assert all(t.status == kv_pb.PUSH_STATUS_OK for t in sends)
        await cluster.all_blocks_free()

    plan = FaultPlan(corrupt_seqs=frozenset({0}), corrupt_resends=corrupt_resends)
    run_cluster(test, faults={"prefill-0": plan})


def test_a_client_deadline_ends_the_request_and_frees_its_blocks() -> None:
    async def test(cluster: RouterCluster) -> None:
        # NOTE: ~2k tokens, so the deadline falls mid-decode however fast the
        # machine is (the tiny model makes 150 in under 0.3 s on an idle one).
        slow = SamplingParams(max_tokens=1900, temperature=0.0, ignore_eos=True)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.generate(PROMPTS[12], slow, timeout=0.3)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await cluster.all_blocks_free()
        assert cluster.router.generation.num_running == 0

    run_cluster(test, engine=replace(ENGINE, max_model_len=2048, num_kv_blocks=160))


def test_a_full_decode_worker_queues_then_answers_resource_exhausted() -> None:
    """Another client's admission holds 13 of the decode worker's 16 blocks: a request
    waits `queue_timeout_s` for room, then gets RESOURCE_EXHAUSTED; once the blocks are
    released the same request is served."""

    async def test(cluster: RouterCluster) -> None:
        (decode,) = cluster.workers
        async with grpc.aio.insecure_channel(decode.address) as channel:
            worker = pb_grpc.WorkerStub(channel)
            hog = pb.AdmitRequest(request_id="hog", prompt_token_ids=[256, *range(200)])
            await worker.Admit(hog, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cluster.generate([256, *range(60)], GREEDY)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "full" in (err.value.details() or "")
            await worker.Release(pb.ReleaseRequest(request_id="hog"), timeout=5)
        assert tokens_of(await cluster.generate([256, *range(60)], GREEDY))
        await cluster.all_blocks_free()

    small = replace(ENGINE, num_kv_blocks=16)
    run_cluster(
        test,
        ("decode",),
        router=router_config(queue_timeout_s=0.5, short_prompt_tokens=1000),
        engine=small,
    )


def test_tls_and_bearer_token_end_to_end(tmp_path: Path, reference: list[list[int]]) -> None:
    """The router serves TLS and requires a token on the client port; workers register on
    the separate plaintext registry port; the SDK connects with the CA and the token."""
    certs = write_self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = router_config(
        tls_cert=str(certs.cert_file),
        tls_key=str(certs.key_file),
        auth_token_file=str(token_file),
        registry_port=0,
    )

    async def test(cluster: RouterCluster) -> None:
        assert cluster.router.registry_address != cluster.router.address
        trusted = {"root_certificates": certs.cert_file, "max_retries": 0}
        async with AsyncClient(cluster.router.address, token="s3cret", **trusted) as client:
            done = await client.complete(
                PROMPTS[12], max_tokens=12, temperature=0.0, ignore_eos=True
            )
            assert list(done.token_ids) == reference[12]
        async with AsyncClient(cluster.router.address, token="wrong", **trusted) as client:
            with pytest.raises(UnauthenticatedError):
                await client.complete("hi", max_tokens=2)
        async with AsyncClient(cluster.router.address, max_retries=0, timeout=5) as client:
            with pytest.raises(UnavailableError):  # plaintext to a TLS port
                await client.complete("hi", max_tokens=2)
        await cluster.all_blocks_free()

    run_cluster(test, router=config)


def test_a_worker_of_another_model_is_refused() -> None:
    async def test(cluster: RouterCluster) -> None:
        stub = pb_grpc.RegistryStub(cluster.channel)
        request = pb.RegisterRequest(
            worker_id="stranger",
            role=gen_pb.WORKER_ROLE_DECODE,
            address="127.0.0.1:1",
            model="llama-3-8b",
            block_hash_scheme=1,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Register(request, timeout=5)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "--model" in (err.value.details() or "")
        assert len(cluster.router.registry.records()) == 1

    run_cluster(test, ("mixed",))


def test_a_draining_worker_tells_the_router_at_once_and_gets_no_new_requests(
    reference: list[list[int]],
) -> None:
    async def test(cluster: RouterCluster) -> None:
        first, _ = cluster.workers
        first.servicer.draining = True
        assert first.registration is not None
        first.registration.beat_now()
        record = cluster.router.registry.get(first.servicer.config.worker_id)
        for _ in range(100):  # well under the 5 s heartbeat interval
            if record is not None and record.state.value == "draining":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the router did not hear about the drain")
        results = await asyncio.gather(*(cluster.generate(p, GREEDY) for p in PROMPTS[:4]))
        assert [tokens_of(r) for r in results] == reference[:4]
        assert (await first.engine.stats()).cached_blocks == 0  # nothing ran there
        await cluster.all_blocks_free()

    slow_beats = router_config(heartbeat_interval_s=5.0, worker_ttl_s=15.0)
    run_cluster(test, ("mixed", "mixed"), router=slow_beats)
