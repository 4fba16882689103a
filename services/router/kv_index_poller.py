"""Keeps the router's cluster KV index and bandwidth table current: every interval, one
GetStats call per registered worker (bounded concurrency, a deadline on each), asking for
prefix-cache events after the last one applied, or for a snapshot when the index lost
track of that worker. The prefill workers' transfer records feed the measured bandwidth
of each (prefill, decode) pair. A worker that fails a call is simply tried next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

import grpc

from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry.topology import tier_between

from .kv_index import EventKind, IndexEvent, KVIndex, SyncState, WorkerUpdate
from .placement.bandwidth import BandwidthTable
from .registry import Registry
from .worker_clients import WorkerClients
from .workers import WorkerId, WorkerRecord

log = logging.getLogger(__name__)

_KINDS = {"stored": EventKind.STORED, "removed": EventKind.REMOVED, "cleared": EventKind.CLEARED}
_SEEN_TRANSFERS = 4096
"""Transfer ids remembered per worker (GetStats repeats its recent ones every call)."""


def update_from_proto(stats: pb.WorkerStats) -> WorkerUpdate:
    events = []
    for e in stats.events:
        which = e.WhichOneof("event")
        if which is None:
            continue  # an event kind this router does not know: the seq still counts
        kind = _KINDS[which]
        hashes = () if kind is EventKind.CLEARED else getattr(e, which).block_hashes
        events.append(IndexEvent(e.seq, kind, hashes))
    return WorkerUpdate(
        incarnation=stats.incarnation,
        last_seq=stats.last_event_seq,
        events=events,
        truncated=stats.events_truncated,
        snapshot=stats.cached_block_hashes if stats.has_snapshot else None,
    )


class _SeenTransfers:
    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def first_time(self, key: str) -> bool:
        if key in self._ids:
            return False
        self._ids.add(key)
        self._order.append(key)
        if len(self._order) > _SEEN_TRANSFERS:
            self._ids.discard(self._order.popleft())
        return True


class KVIndexPoller:
    def __init__(
        self,
        registry: Registry,
        clients: WorkerClients,
        index: KVIndex,
        bandwidth: BandwidthTable,
        *,
        interval_s: float,
        timeout_s: float = 2.0,
        concurrency: int = 32,
    ) -> None:
        if not interval_s > 0 or not timeout_s > 0 or concurrency < 1:
            raise ValueError("interval_s and timeout_s must be positive, concurrency >= 1")
        self.registry = registry
        self.clients = clients
        self.index = index
        self.bandwidth = bandwidth
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(concurrency)
        self._seen: dict[WorkerId, _SeenTransfers] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kvferry-kv-index")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # never let one bad round stop the index
                log.exception("kv index round failed")
            await asyncio.sleep(self.interval_s)

    async def poll_once(self) -> None:
        """One round over every registered worker."""
        records = self.registry.records()
        live = {r.info.worker_id for r in records}
        gone = [w for w in self.index.workers() if w not in live]
        for wid in gone:
            self.index.remove_worker(wid)
            self._seen.pop(wid, None)
        if gone:
            self.bandwidth.forget(live)
        by_endpoint = {r.info.kv_endpoint: r for r in records if r.info.kv_endpoint}
        await asyncio.gather(*(self._poll(r, by_endpoint) for r in records))
        self.index.maybe_collect()
        self.rounds += 1

    async def _poll(self, record: WorkerRecord, by_endpoint: dict[str, WorkerRecord]) -> None:
        wid = record.info.worker_id
        async with self._sem:
            for _ in range(2):  # the second call only when the first showed a lost track
                sync = self.index.sync_state(wid)
                snapshot = sync is None or sync.state is SyncState.NEEDS_SNAPSHOT
                request = pb.WorkerStatsRequest(
                    since_event_seq=sync.applied_seq if sync is not None else 0,
                    include_snapshot=snapshot,
                )
                try:
                    stub = self.clients.stub(record.info.address)
                    stats = await stub.GetStats(request, timeout=self.timeout_s)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError) as err:
                    self.failures += 1
                    log.debug("kv index: GetStats on %s failed: %s", wid, err)
                    return
                if self.registry.get(wid) is not record:
                    return  # it left (or re-registered) while we waited: next round
                state = self.index.apply(wid, update_from_proto(stats))
                self._observe(record, stats.recent_transfers, by_endpoint)
                if snapshot or state is SyncState.IN_SYNC:
                    return
                after = self.index.sync_state(wid)
                log.info(
                    "kv index: resync of %s from a snapshot: %s",
                    wid,
                    after.reason if after is not None else "",
                )

    def _observe(
        self,
        src: WorkerRecord,
        records: Iterable[kv_pb.TransferRecord],
        by_endpoint: dict[str, WorkerRecord],
    ) -> None:
        seen = self._seen.setdefault(src.info.worker_id, _SeenTransfers())
        for t in records:
            if t.direction != kv_pb.TRANSFER_DIRECTION_SEND or t.status != kv_pb.PUSH_STATUS_OK:
                continue
            dst = by_endpoint.get(t.peer)
            if dst is None or not seen.first_time(f"{t.request_id}>{t.peer}"):
                continue
            tier = tier_between(src.info.labels, dst.info.labels)
            # NOTE: the link's time, not the whole push's (which waits on the prefill);
            # a sender that does not measure it reports 0 (see placement/bandwidth.py).
            seconds = t.wire_seconds if t.wire_seconds > 0 else t.seconds
            self.bandwidth.observe(src.info.worker_id, dst.info.worker_id, t.bytes, seconds, tier)
