"""KV transfer over real gRPC sockets on 127.0.0.1: data, corruption, errors, deadlines."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import pytest
import torch

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as pb
from kvferry._proto.kvferry.v1 import kvtransfer_pb2_grpc as pb_grpc
from kvferry.services.kvtransfer import (
    FaultPlan,
    GrpcKVSender,
    KVSlab,
    KVTransferConfig,
    KVTransferServer,
    KVTransferServicer,
    PushStatus,
    ReceiverUnavailableError,
    TransferTimeoutError,
    UnknownRequestError,
    end_chunk,
    split_slab,
)

T = TypeVar("T")
NUM_LAYERS, BLOCK_SIZE, HEADS, HEAD_DIM = 8, 16, 4, 64
POSITIONS = list(range(1, 33))  # 32 blocks
# One block of one layer: 2 x 16 x 4 x 64 x 2 bytes (bf16) = 16 KiB; one layer of the 32
# blocks 512 KiB; a request's 8 layers 4 MiB, pushed as 4 slabs of 2 layers.
CONFIG = KVTransferConfig(max_chunk_bytes=256 << 10)  # 16 blocks of one layer: 16 chunks/request


class StoringSink:
    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.slabs: list[KVSlab] = []
        self.completed: dict[str, int] = {}

    def accept(self, slab: KVSlab) -> None:
        if slab.request_id not in self.known:
            raise KeyError(slab.request_id)
        self.slabs.append(slab)

    def complete(self, request_id: str, first_token_id: int) -> None:
        if request_id not in self.known:
            raise KeyError(request_id)
        self.completed[request_id] = first_token_id

    def tensor(self, request_id: str, num_layers: int) -> torch.Tensor:
        out = torch.zeros(num_layers, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM)
        out = out.to(torch.bfloat16)
        col = {p: i for i, p in enumerate(POSITIONS)}
        for slab in self.slabs:
            if slab.request_id == request_id:
                cols = [col[p] for p in slab.block_positions]
                out[slab.layer_start : slab.layer_end, :, cols] = slab.data
        return out


def kv(num_layers: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (num_layers, 2, len(POSITIONS), BLOCK_SIZE, HEADS, HEAD_DIM)
    return torch.randn(shape, generator=gen).to(torch.bfloat16)


def slabs(rid: str, data: torch.Tensor, layers_per_slab: int = 2) -> list[KVSlab]:
    return [
        KVSlab(rid, l0, l0 + layers_per_slab, POSITIONS, data[l0 : l0 + layers_per_slab])
        for l0 in range(0, data.shape[0], layers_per_slab)
    ]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def with_server(
    sink: StoringSink,
    body: Callable[[KVTransferServer, GrpcKVSender], Awaitable[T]],
    *,
    faults: FaultPlan | None = None,
    config: KVTransferConfig = CONFIG,
) -> T:
    server = await KVTransferServer.start(sink, host="127.0.0.1", port=0, config=config)
    sender = GrpcKVSender(config, faults=faults)
    try:
        return await body(server, sender)
    finally:
        await sender.close()
        await server.stop(0)


@pytest.mark.parametrize("verify_in_thread", [False, True])
def test_push_8_mib_over_sockets_arrives_identical(verify_in_thread: bool) -> None:
    sink = StoringSink({"a", "b"})
    config = KVTransferConfig(
        max_chunk_bytes=CONFIG.max_chunk_bytes, verify_in_thread=verify_in_thread
    )
    data_a, data_b = kv(NUM_LAYERS, seed=1), kv(NUM_LAYERS, seed=2)  # 4 MiB each

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> None:
        assert server.port > 0
        assert server.endpoint == f"127.0.0.1:{server.port}"
        stats = await asyncio.gather(
            sender.push(server.endpoint, "a", slabs("a", data_a), first_token_id=5, deadline_s=10),
            sender.push(server.endpoint, "b", slabs("b", data_b), first_token_id=6, deadline_s=10),
        )
        assert [s.bytes for s in stats] == [4 << 20, 4 << 20]
        assert [s.chunks for s in stats] == [16, 16]
        received = server.servicer.transfers.snapshot()
        assert sorted((r.request_id, r.bytes, r.status) for r in received) == [
            ("a", 4 << 20, PushStatus.OK),
            ("b", 4 << 20, PushStatus.OK),
        ]
        assert all(r.peer.startswith("ipv4:127.0.0.1:") for r in received)

    run(with_server(sink, body, config=config))
    assert torch.equal(sink.tensor("a", NUM_LAYERS), data_a)
    assert torch.equal(sink.tensor("b", NUM_LAYERS), data_b)
    assert sink.completed == {"a": 5, "b": 6}


def test_corrupt_chunk_is_detected_and_resent() -> None:
    sink = StoringSink({"a"})
    data = kv(NUM_LAYERS)

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> None:
        stats = await sender.push(
            server.endpoint, "a", slabs("a", data), first_token_id=1, deadline_s=10
        )
        assert stats.resent_chunks == 2
        first, second = server.servicer.transfers.snapshot()
        assert (first.status, first.chunks) == (PushStatus.CORRUPT, 14)
        assert (second.status, second.chunks) == (PushStatus.OK, 2)

    run(with_server(sink, body, faults=FaultPlan(corrupt_seqs=frozenset({3, 9}))))
    assert torch.equal(sink.tensor("a", NUM_LAYERS), data)
    assert sink.completed == {"a": 1}


def test_servicer_registered_with_the_generated_helper_works_too() -> None:
    sink = StoringSink({"a"})
    data = kv(NUM_LAYERS)

    async def main() -> None:
        server = grpc.aio.server(options=CONFIG.grpc_options())
        servicer = KVTransferServicer(sink, CONFIG)
        pb_grpc.add_KVTransferServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sender = GrpcKVSender(CONFIG, faults=FaultPlan(corrupt_seqs=frozenset({5})))
        try:
            stats = await sender.push(
                f"127.0.0.1:{port}", "a", slabs("a", data), first_token_id=3, deadline_s=10
            )
            assert stats.resent_chunks == 1
        finally:
            await sender.close()
            await server.stop(0)
            servicer.close()

    run(main())
    assert torch.equal(sink.tensor("a", NUM_LAYERS), data)
    assert sink.completed == {"a": 3}


def test_unknown_request_is_a_clear_error() -> None:
    sink = StoringSink(set())

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> None:
        with pytest.raises(UnknownRequestError, match="not waiting for KV for request 'ghost'"):
            await sender.push(server.endpoint, "ghost", slabs("ghost", kv(2)), deadline_s=10)

    run(with_server(sink, body))


def test_stalled_sender_hits_its_deadline() -> None:
    sink = StoringSink({"a"})
    data = kv(4)

    async def stalling() -> AsyncIterator[KVSlab]:
        yield slabs("a", data)[0]
        await asyncio.sleep(30)
        yield slabs("a", data)[1]

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TransferTimeoutError, match="deadline"):
            await sender.push(server.endpoint, "a", stalling(), first_token_id=1, deadline_s=0.3)
        return loop.time() - start

    assert run(with_server(sink, body)) < 5
    assert sink.completed == {}


class HungServicer(pb_grpc.KVTransferServicer):
    """A receiver that reads everything and never answers."""

    async def PushKV(
        self, request_iterator: AsyncIterator[pb.KVChunk], context: grpc.aio.ServicerContext
    ) -> pb.PushKVResponse:
        async for _ in request_iterator:
            pass
        await asyncio.sleep(30)
        return pb.PushKVResponse()


def test_hung_receiver_surfaces_deadline_exceeded_as_transfer_error() -> None:
    async def main() -> float:
        server = grpc.aio.server()
        pb_grpc.add_KVTransferServicer_to_server(HungServicer(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sender = GrpcKVSender(CONFIG)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            with pytest.raises(TransferTimeoutError, match="exceeded its deadline"):
                await sender.push(f"127.0.0.1:{port}", "a", slabs("a", kv(2)), deadline_s=0.3)
            return loop.time() - start
        finally:
            await sender.close()
            await server.stop(0)

    assert run(main()) < 5


def test_unreachable_receiver() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        sender = GrpcKVSender(CONFIG)
        try:
            with pytest.raises((ReceiverUnavailableError, TransferTimeoutError)):
                await sender.push(f"127.0.0.1:{port}", "a", slabs("a", kv(2)), deadline_s=3)
        finally:
            await sender.close()

    run(main())


def test_malformed_stream_is_invalid_argument() -> None:
    sink = StoringSink({"a", "b"})

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> None:
        # Plain protobuf messages, as any peer would send them.
        chunk_a = split_slab(slabs("a", kv(2))[0], CONFIG.max_chunk_bytes)[0].to_proto()
        stray = end_chunk("b", 1, None).to_proto()

        async def stream() -> AsyncIterator[pb.KVChunk]:
            yield chunk_a
            yield stray

        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            stub = pb_grpc.KVTransferStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.PushKV(stream(), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "carries a chunk for 'b'" in (info.value.details() or "")

    run(with_server(sink, body))


def test_pushes_beyond_the_limit_wait_for_a_slot() -> None:
    sink = StoringSink({"a", "b"})
    release = asyncio.Event()
    config = KVTransferConfig(max_chunk_bytes=CONFIG.max_chunk_bytes, max_concurrent_pushes=1)

    async def held() -> AsyncIterator[KVSlab]:
        yield slabs("a", kv(2))[0]
        await release.wait()

    async def body(server: KVTransferServer, sender: GrpcKVSender) -> None:
        first = asyncio.create_task(sender.push(server.endpoint, "a", held(), deadline_s=10))
        for _ in range(200):  # until the first push holds the only slot
            if sink.slabs:
                break
            await asyncio.sleep(0.01)
        second = asyncio.create_task(
            sender.push(server.endpoint, "b", slabs("b", kv(2)), first_token_id=4, deadline_s=10)
        )
        await asyncio.sleep(0.3)
        assert not second.done()
        assert {s.request_id for s in sink.slabs} == {"a"}
        release.set()
        assert (await first).status is PushStatus.OK
        assert (await second).status is PushStatus.OK
        assert sink.completed == {"b": 4}

    run(with_server(sink, body, config=config))
