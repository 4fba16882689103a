"""Regressions from review: worker failures and cancellations leave nothing behind, and
re-admission continues seeded streams exactly. In-process router + workers, real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.sampling_params import SamplingParams
from kvferry.services.engine.engine import LLMEngine
from kvferry.wire import sampling_to_proto

from .router_cluster import RouterCluster, router_config, run_cluster, tokens_of

LONG = [256, *range(1, 40)]  # beyond the test router's 16-token threshold: prefill hop
SHORT = [256, 1, 2, 3]  # runs whole on a decode worker


async def _stop_the_decode_worker_holding_it(cluster: RouterCluster) -> str:
    for worker in cluster.role("decode"):
        if worker.engine.num_active:
            if worker.registration is not None:
                await worker.registration.stop()
            await worker.server.stop(0)
            return worker.servicer.config.worker_id
    raise AssertionError("no decode worker holds the request")


@pytest.mark.parametrize("prompt", [LONG, SHORT], ids=["prefill-hop", "decode-only"])
@pytest.mark.parametrize("seed", [None, 1234], ids=["greedy", "seeded"])
def test_readmission_continues_the_stream_exactly(prompt: list[int], seed: int | None) -> None:
    params = SamplingParams(
        max_tokens=40,
        temperature=0.0 if seed is None else 1.0,
        seed=seed,
        ignore_eos=True,
        logprobs=1,
    )

    async def test(cluster: RouterCluster) -> None:
        want = tokens_of(await cluster.generate(prompt, params))
        call = cluster.stream(prompt, params)
        messages: list[gen_pb.GenerateResponse] = []
        stopped = None
        while (message := await call.read()) is not grpc.aio.EOF:
            messages.append(message)
            if stopped is None and len(tokens_of(messages)) >= 10:
                stopped = await _stop_the_decode_worker_holding_it(cluster)
        assert stopped is not None
        got = tokens_of(messages)
        assert got == want
        logprobs = [lp.token_id for m in messages for lp in m.logprobs]
        assert logprobs == got  # one logprob per token, aligned
        assert messages[-1].usage.completion_tokens == params.max_tokens

    run_cluster(test, ("prefill", "decode", "decode"))


def _count_decode_handlers(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    from kvferry.services.worker.servicer import WorkerServicer

    active = {"n": 0}
    original = WorkerServicer.Decode

    async def counted(self: WorkerServicer, request: Any, context: Any) -> Any:
        active["n"] += 1
        try:
            async for message in original(self, request, context):
                yield message
        finally:
            active["n"] -= 1

    monkeypatch.setattr(WorkerServicer, "Decode", counted)
    return active


async def _until(predicate: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_a_client_cancelling_during_prefill_closes_the_open_decode_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active = _count_decode_handlers(monkeypatch)

    async def test(cluster: RouterCluster) -> None:
        prefill = cluster.role("prefill")[0].servicer
        original = prefill._prefill

        async def slow(request: pb.PrefillRequest) -> pb.PrefillResponse:
            await asyncio.sleep(30)
            return await original(request)

        monkeypatch.setattr(prefill, "_prefill", slow)
        call = cluster.stream(LONG, SamplingParams(max_tokens=4, temperature=0.0))
        await _until(lambda: active["n"] == 1)
        call.cancel()
        await _until(lambda: active["n"] == 0)
        await cluster.all_blocks_free()

    run_cluster(test)


def test_a_failed_last_attempt_closes_the_open_decode_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active = _count_decode_handlers(monkeypatch)

    async def test(cluster: RouterCluster) -> None:
        prefill = cluster.role("prefill")[0].servicer

        async def broken(request: pb.PrefillRequest) -> pb.PrefillResponse:
            raise RuntimeError("prefill exploded")

        monkeypatch.setattr(prefill, "_prefill", broken)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.generate(LONG, SamplingParams(max_tokens=4, temperature=0.0))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        await _until(lambda: active["n"] == 0)
        await cluster.all_blocks_free()

    run_cluster(test, router=router_config(max_attempts=1))


def test_a_timed_out_admit_leaves_no_blocks_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's Admit deadline passes while the engine thread is inside admit_remote."""
    original = LLMEngine.admit_remote
    slow = {"on": True}

    def slow_admit(self: LLMEngine, *args: Any, **kwargs: Any) -> Any:
        if slow["on"]:
            time.sleep(0.6)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LLMEngine, "admit_remote", slow_admit)

    async def test(cluster: RouterCluster) -> None:
        with pytest.raises(grpc.aio.AioRpcError):
            await cluster.generate(SHORT, SamplingParams(max_tokens=4, temperature=0.0))
        slow["on"] = False
        await cluster.all_blocks_free()
        (decode,) = cluster.workers
        assert not decode.engine.engine.scheduler.requests

    run_cluster(test, ("decode",), router=router_config(admit_timeout_s=0.3, max_attempts=1))


def test_release_ends_a_running_decode_stream() -> None:
    async def test(cluster: RouterCluster) -> None:
        (worker,) = cluster.workers
        params = sampling_to_proto(SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            admit = pb.AdmitRequest(request_id="r", prompt_token_ids=SHORT, sampling=params)
            await stub.Admit(admit, timeout=5)
            call = stub.Decode(pb.DecodeRequest(request_id="r", compute_prompt=True), timeout=60)
            assert (await call.read()).token_ids
            assert (await stub.Release(pb.ReleaseRequest(request_id="r"), timeout=5)).released

            async def rest() -> Sequence[Any]:
                return [m async for m in _read_all(call)]

            await asyncio.wait_for(rest(), 3.0)
        await _until(lambda: worker.engine.num_active == 0)
        await cluster.all_blocks_free()

    run_cluster(test, ("decode",))


async def _read_all(call: grpc.aio.UnaryStreamCall) -> Any:
    while (message := await call.read()) is not grpc.aio.EOF:
        yield message
