"""The cluster KV index over real gRPC: a worker's GetStats snapshot agrees with its event
stream; the router's poller keeps its index equal to the workers' caches; a request that
shares a prefix goes to the prefill worker holding it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from kvferry import SamplingParams
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.engine.block_hash import hash_block_tokens
from kvferry.services.engine.config import EngineConfig
from kvferry.services.router.kv_index import SyncState
from kvferry.services.router.workers import WorkerId
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.server import WorkerServer
from kvferry.wire import sampling_to_proto

from .router_cluster import RouterCluster, router_config, run_cluster, tokens_of

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
BLOCK = 16


def replay(events: Sequence[pb.KVCacheEvent], upto: int) -> set[int]:
    held: set[int] = set()
    for e in events:
        if e.seq > upto:
            break
        if e.HasField("stored"):
            held.update(e.stored.block_hashes)
        elif e.HasField("removed"):
            held.difference_update(e.removed.block_hashes)
        else:
            held.clear()
    return held


def test_a_snapshot_is_consistent_with_the_event_sequence_under_load() -> None:
    """Snapshots taken while requests run equal the replay of every event up to their
    last_event_seq (the engine churns its cache: 24 blocks, prompts of 3-5 blocks)."""

    async def main() -> None:
        engine = EngineConfig(model="tiny", max_model_len=128, num_kv_blocks=24)
        worker = await WorkerServer.start(engine, WorkerConfig(role="decode", worker_id="w"))
        try:
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.WorkerStub(channel)

                async def run(i: int) -> None:
                    prompt = [256, *((i * 37 + j) % 250 for j in range(48 + 16 * (i % 3)))]
                    rid = f"r{i}"
                    await stub.Admit(
                        pb.AdmitRequest(
                            request_id=rid,
                            prompt_token_ids=prompt,
                            sampling=sampling_to_proto(GREEDY),
                        ),
                        timeout=20,
                    )
                    async for _ in stub.Decode(
                        pb.DecodeRequest(request_id=rid, compute_prompt=True), timeout=20
                    ):
                        pass

                snapshots: list[pb.WorkerStats] = []

                async def snap() -> None:
                    for _ in range(12):
                        request = pb.WorkerStatsRequest(include_snapshot=True)
                        snapshots.append(await stub.GetStats(request, timeout=5))
                        await asyncio.sleep(0.01)

                for wave in range(3):
                    await asyncio.gather(snap(), *(run(10 * wave + i) for i in range(4)))
                everything = await stub.GetStats(pb.WorkerStatsRequest(), timeout=5)
        finally:
            await worker.stop(0.5)
        assert not everything.events_truncated
        assert any(e.HasField("removed") for e in everything.events)  # the cache churned
        for stats in snapshots:
            assert stats.has_snapshot
            assert stats.incarnation == worker.servicer.incarnation != 0
            assert set(stats.cached_block_hashes) == replay(everything.events, stats.last_event_seq)
        plain = everything
        assert not plain.has_snapshot and list(plain.cached_block_hashes) == []

    asyncio.run(asyncio.wait_for(main(), 120))


def _config_file(tmp_path: Path, policy: str) -> str:
    path = tmp_path / "placement.yaml"
    # the tiny model's KV blocks are small: measure every transfer
    path.write_text(f"policy: {policy}\ntransfer: {{min_bytes: 0}}\n")
    return str(path)


async def _index_caught_up(cluster: RouterCluster) -> None:
    """Wait until the router's index equals every worker's snapshot (bounded)."""
    poller = cluster.router.poller
    assert poller is not None
    for _ in range(200):
        done = True
        for worker in cluster.workers:
            wid = WorkerId(worker.servicer.config.worker_id)
            sync = poller.index.sync_state(wid)
            truth = set(await worker.engine.call(lambda e: e.kv.pool.cached_hashes()))
            if (
                sync is None
                or sync.state is not SyncState.IN_SYNC
                or poller.index.held(wid) != truth
            ):
                done = False
        if done:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the router's KV index did not catch up with the workers")


def test_the_router_index_follows_the_workers_and_measures_pairs(tmp_path: Path) -> None:
    async def test(cluster: RouterCluster) -> None:
        prompt = [256, *range(1, 80)]
        await cluster.generate(prompt, GREEDY)
        await _index_caught_up(cluster)
        index = cluster.router.poller.index  # type: ignore[union-attr]
        hashes = hash_block_tokens(prompt, BLOCK)
        hits = index.prefix_hits(hashes)
        assert hits.get(WorkerId("prefill-0")) == len(hashes)
        assert hits.get(WorkerId("decode-1")) == len(hashes)  # the KV it received is cached
        pairs = cluster.router.poller.bandwidth.pairs()  # type: ignore[union-attr]
        assert set(pairs) == {(WorkerId("prefill-0"), WorkerId("decode-1"))}
        # what the pair learned is the push's wire time, not its whole duration
        async with grpc.aio.insecure_channel(cluster.role("prefill")[0].address) as channel:
            stats = await pb_grpc.WorkerStub(channel).GetStats(pb.WorkerStatsRequest(), timeout=5)
        (push,) = [
            t
            for t in stats.recent_transfers
            if t.direction == kv_pb.TRANSFER_DIRECTION_SEND and t.bytes > 0
        ]
        assert 0 < push.wire_seconds <= push.seconds
        learned = pairs[(WorkerId("prefill-0"), WorkerId("decode-1"))].bytes_per_s
        assert learned == pytest.approx(push.bytes / push.wire_seconds)
        # a restarted incarnation (as if the worker came back empty) is noticed and resynced
        decode = cluster.role("decode")[0]
        before = index.sync_state(WorkerId("decode-1"))
        assert before is not None
        resyncs = before.resyncs
        decode.servicer.incarnation += 1
        for _ in range(200):
            sync = index.sync_state(WorkerId("decode-1"))
            if sync is not None and sync.incarnation == decode.servicer.incarnation:
                break
            await asyncio.sleep(0.02)
        await _index_caught_up(cluster)
        sync = index.sync_state(WorkerId("decode-1"))
        assert sync is not None and sync.incarnation == decode.servicer.incarnation
        assert sync.resyncs == resyncs + 1
        await cluster.all_blocks_free()

    config = router_config(
        placement_config=_config_file(tmp_path, "kvferry"), index_poll_interval_s=0.05
    )
    run_cluster(test, router=config)


def test_a_shared_prefix_goes_to_the_prefill_worker_that_holds_it(tmp_path: Path) -> None:
    """Each prefix is computed first on a chosen prefill worker (directly on its engine,
    alternating workers); the router must send the request sharing it there."""

    async def sends(cluster: RouterCluster) -> dict[str, int]:
        out = {}
        for worker in cluster.role("prefill"):
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.WorkerStub(channel)
                stats = await stub.GetStats(pb.WorkerStatsRequest(), timeout=5)
            out[worker.servicer.config.worker_id] = sum(
                t.direction == kv_pb.TRANSFER_DIRECTION_SEND and t.bytes > 0
                for t in stats.recent_transfers
            )
        return out

    async def test(cluster: RouterCluster) -> None:
        prefill = cluster.role("prefill")
        for i in range(4):
            holder = prefill[i % 2]
            shared = [256, *((i * 31 + j) % 250 for j in range(63))]  # 4 full blocks
            async for _ in holder.engine.generate(f"warm-{i}", shared, GREEDY):
                pass
            await _index_caught_up(cluster)
            before = await sends(cluster)
            # 40 new tokens: more than the decode worker may compute itself (16), so a hop
            messages = await cluster.generate([*shared, *range(150, 190)], GREEDY)
            after = await sends(cluster)
            chosen = [w for w in after if after[w] > before[w]]
            assert chosen == [holder.servicer.config.worker_id], f"prefix {i}"
            assert messages[-1].usage.cached_tokens == 64  # the prefill worker reused it
            assert len(tokens_of(messages)) == GREEDY.max_tokens
        await cluster.all_blocks_free()

    config = router_config(
        placement_config=_config_file(tmp_path, "cache-aware"), index_poll_interval_s=0.05
    )
    run_cluster(test, ("prefill", "prefill", "decode"), router=config)


def test_the_poller_survives_a_dead_worker_and_forgets_it_when_it_leaves() -> None:
    async def test(cluster: RouterCluster) -> None:
        poller = cluster.router.poller
        assert poller is not None
        await _index_caught_up(cluster)
        decode = cluster.role("decode")[0]
        wid = WorkerId(decode.servicer.config.worker_id)
        if decode.registration is not None:
            await decode.registration.stop()  # no re-registration behind the test's back
        await decode.server.stop(0)  # the worker's port goes dark
        failures, rounds = poller.failures, poller.rounds
        for _ in range(200):
            if poller.failures > failures + 1 and poller.rounds > rounds + 2:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the poller stopped polling after a worker died")
        assert wid in poller.index.workers()  # kept until the registry lets it go
        cluster.router.registry.remove(wid)
        for _ in range(200):
            if wid not in poller.index.workers():
                break
            await asyncio.sleep(0.02)
        assert wid not in poller.index.workers()
        prefill = cluster.role("prefill")[0]
        sync = poller.index.sync_state(WorkerId(prefill.servicer.config.worker_id))
        assert sync is not None and sync.state is SyncState.IN_SYNC

    run_cluster(test, router=router_config(index_poll_interval_s=0.05))
