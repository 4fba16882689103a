"""The push policy end to end, in-process: delivery, resend, give-up, deadlines, factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
import torch

from kvferry.errors import TransferError
from kvferry.services.kvtransfer import (
    ChunkCorruptError,
    FaultPlan,
    GrpcKVSender,
    KVSlab,
    KVTransferConfig,
    LoopbackTransport,
    PushStatus,
    ReceiverUnavailableError,
    TransferDirection,
    TransferTimeoutError,
    TransportKind,
    UnknownRequestError,
    make_sender,
)

from .test_kvtransfer_receiver import RecordingSink

T = TypeVar("T")
EP = "decode-0:7000"
LAYERS, BLOCKS = 4, [2, 3, 5]
# One block of one layer: 2 x 4 x 2 x 8 floats = 512 bytes; one layer of 3 blocks: 1536.
CONFIG = KVTransferConfig(max_chunk_bytes=1024)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def layer_slabs(rid: str = "r", seed: int = 0) -> list[KVSlab]:
    gen = torch.Generator().manual_seed(seed)
    return [
        KVSlab(rid, layer, layer + 1, BLOCKS, torch.randn(1, 2, 3, 4, 2, 8, generator=gen))
        for layer in range(LAYERS)
    ]


def stitched(sink: RecordingSink) -> torch.Tensor:
    """The received KV as [layers, 2, blocks, ...] in layer and block order."""
    out = torch.full((LAYERS, 2, len(BLOCKS), 4, 2, 8), float("nan"))
    col = {p: i for i, p in enumerate(BLOCKS)}
    for slab in sink.slabs:
        out[slab.layer_start : slab.layer_end, :, [col[p] for p in slab.block_positions]] = (
            slab.data
        )
    return out


def expected() -> torch.Tensor:
    return torch.cat([s.data for s in layer_slabs()])


def test_push_delivers_identical_tensors_and_completes() -> None:
    sink = RecordingSink()
    sender = LoopbackTransport({EP: sink}, CONFIG)

    async def slabs() -> AsyncIterator[KVSlab]:
        for slab in layer_slabs():
            await asyncio.sleep(0)  # layers arrive as they finish
            yield slab

    stats = run(sender.push(EP, "r", slabs(), first_token_id=11, deadline_s=5))
    assert torch.equal(stitched(sink), expected())
    assert sink.completed == {"r": 11}
    assert (stats.chunks, stats.bytes, stats.resent_chunks) == (8, LAYERS * 1536, 0)
    assert stats.direction is TransferDirection.SEND
    assert stats.status is PushStatus.OK
    assert sender.transfers.snapshot() == [stats]
    (received,) = sender.received.snapshot()
    assert (received.chunks, received.bytes) == (8, LAYERS * 1536)


def test_wire_seconds_leave_out_the_wait_for_kv() -> None:
    """A push that waits on a slow prefill: its duration includes the waits, its wire time
    does not (what the router's bandwidth table learns)."""
    sender = LoopbackTransport({EP: RecordingSink()}, CONFIG)

    async def slow_prefill() -> AsyncIterator[KVSlab]:
        for slab in layer_slabs():
            await asyncio.sleep(0.15)  # the layer is still computing
            yield slab

    stats = run(sender.push(EP, "r", slow_prefill(), deadline_s=5))
    assert stats.seconds >= 0.6
    assert 0 <= stats.wire_seconds < stats.seconds - 0.5
    assert stats.to_proto().wire_seconds == stats.wire_seconds


def test_wire_seconds_count_a_busy_link() -> None:
    """KV ready up front on a slow link: the push's time is the link's."""

    class SlowLink(RecordingSink):
        def accept(self, slab: KVSlab) -> None:
            time.sleep(0.1)  # the receiving end of a busy link
            super().accept(slab)

    sender = LoopbackTransport({EP: SlowLink()}, CONFIG)
    stats = run(sender.push(EP, "r", layer_slabs(), deadline_s=5))
    assert stats.wire_seconds >= 0.1 * stats.chunks - 0.01
    assert stats.wire_seconds <= stats.seconds


def test_layers_then_first_token_in_a_second_push() -> None:
    sink = RecordingSink()
    sender = LoopbackTransport({EP: sink}, CONFIG)
    run(sender.push(EP, "r", layer_slabs(), deadline_s=5))
    assert sink.completed == {}
    stats = run(sender.push(EP, "r", [], first_token_id=3, deadline_s=5))
    assert stats.chunks == 0
    assert sink.completed == {"r": 3}
    assert torch.equal(stitched(sink), expected())


def test_corrupt_chunks_are_detected_and_resent_once() -> None:
    sink = RecordingSink()
    faults = FaultPlan(corrupt_seqs=frozenset({0, 5}))
    sender = LoopbackTransport({EP: sink}, CONFIG, faults=faults)
    stats = run(sender.push(EP, "r", layer_slabs(), first_token_id=1, deadline_s=5))
    assert stats.resent_chunks == 2
    assert stats.chunks == 8  # a resent chunk counts once
    assert torch.equal(stitched(sink), expected())
    assert sink.completed == {"r": 1}
    first, second = sender.received.snapshot()
    assert (first.status, first.chunks) == (PushStatus.CORRUPT, 6)
    assert (second.status, second.chunks) == (PushStatus.OK, 2)


def test_corruption_that_survives_the_resend_gives_up() -> None:
    sink = RecordingSink()
    faults = FaultPlan(corrupt_seqs=frozenset({3}), corrupt_resends=True)
    sender = LoopbackTransport({EP: sink}, CONFIG, faults=faults)
    with pytest.raises(ChunkCorruptError, match=r"chunks \[3\] of 'r' still failed"):
        run(sender.push(EP, "r", layer_slabs(), first_token_id=1, deadline_s=5))
    assert sink.completed == {}


def test_unknown_request_and_unknown_endpoint() -> None:
    sender = LoopbackTransport({EP: RecordingSink(known=set())}, CONFIG)
    with pytest.raises(UnknownRequestError, match="not waiting for KV for request 'r'"):
        run(sender.push(EP, "r", layer_slabs(), deadline_s=5))
    with pytest.raises(ReceiverUnavailableError, match="nowhere:1"):
        run(sender.push("nowhere:1", "r", layer_slabs(), deadline_s=5))
    assert issubclass(UnknownRequestError, TransferError)


def test_deadline_bounds_a_stalled_producer() -> None:
    sink = RecordingSink()
    sender = LoopbackTransport({EP: sink}, CONFIG)

    async def stalls() -> AsyncIterator[KVSlab]:
        yield layer_slabs()[0]
        await asyncio.sleep(30)
        yield layer_slabs()[1]

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TransferTimeoutError, match="deadline"):
            await sender.push(EP, "r", stalls(), first_token_id=1, deadline_s=0.2)
        return loop.time() - start

    assert run(main()) < 5
    assert sink.completed == {}


def test_bad_slab_surfaces_as_itself_and_never_completes() -> None:
    sink = RecordingSink()
    sender = LoopbackTransport({EP: sink}, CONFIG)
    wrong = KVSlab("other", 0, 1, [0], torch.zeros(1, 2, 1, 4, 2, 8))
    with pytest.raises(ValueError, match="slab for 'other' pushed as part of request 'r'"):
        run(sender.push(EP, "r", [layer_slabs()[0], wrong], first_token_id=1, deadline_s=5))
    assert sink.completed == {}


def test_push_argument_checks() -> None:
    sender = LoopbackTransport({EP: RecordingSink()}, CONFIG)
    with pytest.raises(ValueError, match="deadline_s"):
        run(sender.push(EP, "r", [], deadline_s=0))
    with pytest.raises(ValueError, match="request_id"):
        run(sender.push(EP, "", [], deadline_s=1))


def test_factory_picks_the_transport() -> None:
    sink = RecordingSink()
    loopback = make_sender(TransportKind.LOOPBACK, CONFIG, loopback_sinks={EP: sink})
    assert isinstance(loopback, LoopbackTransport)
    run(loopback.push(EP, "r", layer_slabs(), first_token_id=2, deadline_s=5))
    assert sink.completed == {"r": 2}
    run(loopback.close())
    assert isinstance(make_sender(TransportKind.GRPC, CONFIG), GrpcKVSender)
    with pytest.raises(ValueError, match="loopback_sinks"):
        make_sender(TransportKind.GRPC, loopback_sinks={EP: sink})
