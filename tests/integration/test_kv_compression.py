"""FP8-compressed KV transfer over real gRPC on 127.0.0.1: the transport alone, then a
prefill and a decode worker with `kv_compression="fp8"`, and mismatched pairs refused."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import pytest
import torch

from kvferry import LLMEngine, SamplingParams
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.kernels import kv_pack_ref
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.model_runner import KVExport
from kvferry.services.kvtransfer import (
    GrpcKVSender,
    KVSlab,
    KVTransferConfig,
    KVTransferServer,
    TransferRejectedError,
)
from kvferry.services.kvtransfer.compression import KVCodec, KVCompression
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.server import WorkerServer
from kvferry.wire import sampling_to_proto

T = TypeVar("T")
LAYERS, POSITIONS, BLOCK_SIZE, HEADS, HEAD_DIM = 4, list(range(3, 19)), 16, 4, 64
FP8 = KVTransferConfig(max_chunk_bytes=64 << 10, compression=KVCompression.FP8)
NONE = KVTransferConfig(max_chunk_bytes=64 << 10)
CPU = torch.device("cpu")


class StoringSink:
    def __init__(self) -> None:
        self.slabs: list[KVSlab] = []
        self.completed: dict[str, int] = {}

    def accept(self, slab: KVSlab) -> None:
        self.slabs.append(slab)

    def complete(self, request_id: str, first_token_id: int) -> None:
        self.completed[request_id] = first_token_id

    def received(self, codec: KVCodec) -> torch.Tensor:
        """What a decode worker would write: every slab decoded, put in place."""
        out = torch.full((LAYERS, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM), float("nan"))
        col = {p: i for i, p in enumerate(POSITIONS)}
        for slab in self.slabs:
            cols = [col[p] for p in slab.block_positions]
            out[slab.layer_start : slab.layer_end, :, cols] = codec.decode(
                slab, torch.float32, CPU
            ).float()
        return out.to(torch.bfloat16)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def push(
    sender_config: KVTransferConfig, receiver_config: KVTransferConfig, data: torch.Tensor
) -> StoringSink:
    sink = StoringSink()
    server = await KVTransferServer.start(sink, config=receiver_config)
    sender = GrpcKVSender(sender_config)
    try:
        slabs = [KVSlab("a", i, i + 1, POSITIONS, data[i : i + 1]) for i in range(LAYERS)]
        stats = await sender.push(server.endpoint, "a", slabs, first_token_id=9, deadline_s=20)
        assert stats.bytes == data.numel() * (2 if sender_config is NONE else 1)
    finally:
        await sender.close()
        await server.stop(0)
    return sink


def test_fp8_push_arrives_as_the_dequantized_sender_kv() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (LAYERS, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM)
    data = (torch.randn(shape, generator=gen) * 4).to(torch.bfloat16)  # 2 MiB in bf16
    sink = run(push(FP8, FP8, data))
    assert sink.completed == {"a": 9}
    assert all(s.data.dtype == torch.float8_e4m3fn for s in sink.slabs)
    got = sink.received(KVCodec(KVCompression.FP8))
    expected = kv_pack_ref.dequantize_fp8(*kv_pack_ref.quantize_fp8(data), dtype=torch.bfloat16)
    assert torch.equal(got, expected)
    x = data.float()
    assert ((got.float() - x).abs() <= x.abs() * (1 / 16 + 2**-8) + 1e-3).all()
    assert not torch.equal(got, data)  # lossy, as documented


def test_uncompressed_push_stays_bit_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    shape = (LAYERS, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM)
    data = torch.randn(shape, generator=gen).to(torch.bfloat16)
    sink = run(push(NONE, NONE, data))
    assert torch.equal(sink.received(KVCodec()), data)


@pytest.mark.parametrize(
    ("sender", "receiver", "detail"),
    [(FP8, NONE, "compression 'fp8'; this receiver takes 'none'"), (NONE, FP8, "takes 'fp8'")],
)
def test_a_receiver_rejects_a_compression_it_was_not_given(
    sender: KVTransferConfig, receiver: KVTransferConfig, detail: str
) -> None:
    data = torch.zeros(LAYERS, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM)
    with pytest.raises(TransferRejectedError, match="same --kv-compression") as caught:
        run(push(sender, receiver, data.to(torch.bfloat16)))
    assert detail in str(caught.value)


# -- two workers ---------------------------------------------------------------------------
ENGINE = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=32)
PROMPT = [256, *range(65, 65 + 40)]  # 41 tokens: 3 blocks, the last one partial
PARAMS = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def exported_kv(prompt: list[int], positions: list[int]) -> list[torch.Tensor]:
    """The prompt's KV per layer as a prefill worker exports it (an in-process engine with
    the same seeded weights), `[2, len(positions), BS, Hkv, D]` each."""
    engine = LLMEngine(ENGINE)
    layers: dict[int, torch.Tensor] = {}
    export = KVExport(positions, lambda layer, kv: layers.__setitem__(layer, kv))
    engine.add_request("x", prompt, replace(PARAMS, max_tokens=1), kv_export=export)
    for _ in range(20):
        engine.step()
        if not engine.has_unfinished_requests():
            break
    return [layers[i] for i in range(len(layers))]


async def disaggregated(prefill: WorkerServer, decode: WorkerServer) -> None:
    channels = [grpc.aio.insecure_channel(w.address) for w in (prefill, decode)]
    p, d = (pb_grpc.WorkerStub(c) for c in channels)
    try:
        sampling = sampling_to_proto(PARAMS)
        admit = await d.Admit(
            pb.AdmitRequest(request_id="r", prompt_token_ids=PROMPT, sampling=sampling),
            timeout=20,
        )
        assert admit.kv_layout.compression == KVCompression.FP8.wire
        destination = pb.KVDestination(
            kv_endpoint=admit.kv_endpoint,
            needed_block_positions=admit.needed_block_positions,
            kv_layout=admit.kv_layout,
        )
        request = pb.PrefillRequest(
            request_id="r", prompt_token_ids=PROMPT, sampling=sampling, destination=destination
        )
        first = await p.Prefill(request, timeout=20)
        assert first.kv_bytes_sent > 0
        # Every KV write is queued on the decode engine before the push is answered; one
        # more command runs after them. The request is still admitted (no Decode call yet).
        await decode.engine.call(lambda e: None)
        block_ids = decode.servicer.admitted["r"].admission.block_ids
        caches = decode.engine.engine.runner.kv_caches
        positions = list(admit.needed_block_positions)
        for layer, kv in enumerate(exported_kv(PROMPT, positions)):
            expected = kv_pack_ref.dequantize_fp8(
                *kv_pack_ref.quantize_fp8(kv[None]), dtype=kv.dtype
            )[0]
            got = caches[layer][:, [block_ids[q] for q in positions]]
            assert torch.equal(got, expected), f"layer {layer}"
        tokens: list[int] = []
        async for msg in d.Decode(pb.DecodeRequest(request_id="r"), timeout=20):
            tokens += msg.token_ids
        assert tokens[0] == first.first_token_id and len(tokens) == PARAMS.max_tokens
    finally:
        for channel in channels:
            await channel.close()


def test_fp8_workers_move_dequantized_kv_and_generate() -> None:
    async def main() -> None:
        config = WorkerConfig(kv_compression="fp8")
        prefill = await WorkerServer.start(ENGINE, replace(config, role="prefill"))
        decode = await WorkerServer.start(ENGINE, replace(config, role="decode"))
        try:
            await disaggregated(prefill, decode)
        finally:
            await prefill.stop()
            await decode.stop()

    run(main())


def test_mismatched_workers_refuse_before_any_kv_moves() -> None:
    async def main() -> None:
        prefill = await WorkerServer.start(ENGINE, WorkerConfig(role="prefill"))
        decode = await WorkerServer.start(ENGINE, WorkerConfig(role="decode", kv_compression="fp8"))
        channels = [grpc.aio.insecure_channel(w.address) for w in (prefill, decode)]
        p, d = (pb_grpc.WorkerStub(c) for c in channels)
        try:
            admit = await d.Admit(pb.AdmitRequest(request_id="r", prompt_token_ids=PROMPT))
            destination = pb.KVDestination(
                kv_endpoint=admit.kv_endpoint,
                needed_block_positions=admit.needed_block_positions,
                kv_layout=admit.kv_layout,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await p.Prefill(
                    pb.PrefillRequest(
                        request_id="r", prompt_token_ids=PROMPT, destination=destination
                    ),
                    timeout=20,
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "compression" in (caught.value.details() or "")
        finally:
            for channel in channels:
                await channel.close()
            await prefill.stop()
            await decode.stop()

    run(main())


def test_worker_refuses_a_transfer_config_that_contradicts_its_flag() -> None:
    with pytest.raises(ValueError, match="contradicts the worker's kv_compression 'none'"):
        run(WorkerServer.start(ENGINE, WorkerConfig(), kv_config=FP8))
