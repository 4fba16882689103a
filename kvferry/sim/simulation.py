"""One simulated run: the router's side (placement through the REAL policy, admission with
retries, a backlog while every decode worker is full, load reports, the cluster KV index
fed by the workers' prefix-cache events) and the network (KV pushes by topology tier).

Per request: the policy picks a (prefill, decode) pair or a whole run on a decode worker;
the decode worker admits it or refuses (then the router excludes it and asks again; when
every decode worker refused, the request waits in a FIFO backlog until one finishes a
request). The prefill worker queues and computes the prompt, pushing KV layer by layer; the
first token reaches the client when the push ends (the Prefill call returns after it); the
decode worker then streams the rest.

What the policy sees is what the router would: worker records whose load is the last
heartbeat (every `heartbeat_s`) plus the router's own fresh in-flight counts, the real
`KVIndex` fed by polls of each worker's event log (every `index_poll_s`, so it lags), and
the real `BandwidthTable` fed at the same polls with the prefill workers' push records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from kvferry.services.router.kv_index import EventKind, IndexEvent, KVIndex, WorkerUpdate
from kvferry.services.router.placement import (
    BandwidthTable,
    NoEligibleWorkersError,
    PlacementPolicy,
    PlacementRequest,
    StaticView,
)
from kvferry.services.router.workers import (
    Role,
    WorkerId,
    WorkerInfo,
    WorkerLoad,
    WorkerRecord,
)
from kvferry.topology import Tier, tier_between

from .config import SimConfig, lay_out
from .events import EventLoop
from .hardware import Calibration, LinkModel
from .kv_cache import STORED, BlockCache
from .metrics import RequestRecord
from .trace import TRACE_BLOCK_TOKENS, SimRequest
from .workers import DecodeWorker, Job, PrefillWorker

MODEL = "llama-3.1-8b"
_INCARNATION = 1


class Simulation:
    def __init__(
        self,
        config: SimConfig,
        calibration: Calibration,
        policy: PlacementPolicy,
        bandwidth: BandwidthTable,
    ) -> None:
        self.config = config
        self.loop = EventLoop()
        self.gpu = calibration.gpu
        self.links = calibration.links
        self.policy = policy
        self.block_tokens = TRACE_BLOCK_TOKENS
        capacity = self.gpu.kv_capacity_tokens
        block_bytes = self.block_tokens * self.gpu.kv_bytes_per_token
        self.index = KVIndex()
        self.records: list[WorkerRecord] = []
        self.prefill: dict[WorkerId, PrefillWorker] = {}
        self.decode: dict[WorkerId, DecodeWorker] = {}
        for slot in lay_out(config):
            wid = WorkerId(slot.worker_id)
            info = WorkerInfo(
                worker_id=wid,
                role=slot.role,
                address=f"{wid}:0",
                kv_endpoint=f"{wid}:1",
                model=MODEL,
                labels=slot.labels,
                block_size=self.block_tokens,
                kv_bytes_per_block=block_bytes,
                topology_source="sim",
                incarnation=_INCARNATION,
            )
            record = WorkerRecord(info, WorkerLoad(), last_seen=0.0)
            cache = BlockCache(capacity, self.block_tokens)
            if slot.role is Role.PREFILL:
                self.prefill[wid] = PrefillWorker(record, cache, self, config.prefill_batch_tokens)
            else:
                self.decode[wid] = DecodeWorker(
                    record, cache, self, config.max_num_seqs, config.decode_chunk_tokens
                )
            self.records.append(record)
            # A fresh worker's (empty) snapshot puts it in sync with the index.
            self.index.apply(wid, WorkerUpdate(_INCARNATION, 0, snapshot=()))
        self.workers: dict[WorkerId, PrefillWorker | DecodeWorker] = {**self.prefill, **self.decode}
        for worker in self.workers.values():
            worker.record.load = worker.load()  # registration carries the first report
        self.view = StaticView(self.records, index=self.index, bandwidth=bandwidth)
        self.bandwidth = bandwidth
        self._seq = {wid: 0 for wid in self.workers}
        self._transfers: dict[WorkerId, list[tuple[WorkerId, int, float, Tier | None]]] = {
            wid: [] for wid in self.workers
        }
        self._port_free: dict[tuple[WorkerId, bool, str], float] = {}
        self.backlog: deque[Job] = deque()
        self.results: list[RequestRecord] = []
        self._total = 0

    # -- the run ------------------------------------------------------------------------

    def run(self, requests: Sequence[SimRequest]) -> list[RequestRecord]:
        self._check_fits(requests)
        self._total = len(requests)
        for req in requests:
            self.loop.at(req.arrival_s, self._arrive, Job(req))
        n = len(self.records)
        for i, wid in enumerate(self.workers):
            phase = i / n
            self.loop.at(phase * self.config.heartbeat_s, self._heartbeat, wid)
            self.loop.at(phase * self.config.index_poll_s, self._poll_index, wid)
        self.loop.run()
        if len(self.results) != self._total:
            raise RuntimeError(
                f"simulation ended with {self._total - len(self.results)} requests unfinished"
            )
        return self.results

    def _check_fits(self, requests: Sequence[SimRequest]) -> None:
        capacity = self.gpu.kv_capacity_tokens
        for req in requests:
            if req.input_tokens + req.output_tokens > capacity:
                raise ValueError(
                    f"request {req.index} needs {req.input_tokens + req.output_tokens} tokens"
                    f" of KV but a worker holds {capacity}; raise kv_cache_gib in the"
                    " calibration or drop such rows"
                )

    @property
    def _busy(self) -> bool:
        return len(self.results) < self._total

    # -- the router ---------------------------------------------------------------------

    def _arrive(self, job: Job) -> None:
        if self.backlog or not self._place(job):
            self.backlog.append(job)

    def _place(self, job: Job) -> bool:
        """Place and admit `job`; False when every decode worker refused it."""
        req = job.req
        busy: set[WorkerId] = set()
        while True:
            try:
                placement = self.policy.place(
                    PlacementRequest(
                        req.input_tokens, req.block_hashes, frozenset(busy), self.block_tokens
                    ),
                    self.view,
                )
            except NoEligibleWorkersError:
                return False
            decode = self.decode[placement.decode]
            if placement.decode in busy:
                raise RuntimeError(f"the policy picked excluded worker {placement.decode}")
            if decode.admit(job) is None:
                busy.add(placement.decode)
                job.rejections += 1
                continue
            decode.record.in_flight += 1
            job.predicted_hit_blocks = placement.prefill_hit_blocks
            if placement.prefill is None:
                decode.run_whole(job)
            else:
                prefill = self.prefill[placement.prefill]
                # as the router counts it: the prompt less the hits placement expected
                job.prefill_tokens = max(
                    1, req.input_tokens - placement.prefill_hit_blocks * self.block_tokens
                )
                prefill.record.in_flight += 1
                prefill.record.in_flight_prefill_tokens += job.prefill_tokens
                prefill.enqueue(job)
            return True

    def _drain_backlog(self) -> None:
        while self.backlog:
            job = self.backlog[0]
            if not self._place(job):
                return
            self.backlog.popleft()
            job.backlog_s = self.loop.now - job.req.arrival_s

    def _heartbeat(self, wid: WorkerId) -> None:
        worker = self.workers[wid]
        worker.record.load = worker.load()
        worker.record.last_seen = self.loop.now
        if self._busy:
            self.loop.after(self.config.heartbeat_s, self._heartbeat, wid)

    def _poll_index(self, wid: WorkerId) -> None:
        """Read the worker's new prefix-cache events into the index and its finished
        pushes into the bandwidth table (as the router's poller does with GetStats)."""
        for dst, nbytes, seconds, tier in self._transfers[wid]:
            self.bandwidth.observe(wid, dst, nbytes, seconds, tier)
        self._transfers[wid].clear()
        cache = self.workers[wid].cache
        if cache.events:
            events = []
            for kind, hashes in cache.events:
                self._seq[wid] += 1
                ekind = EventKind.STORED if kind == STORED else EventKind.REMOVED
                events.append(IndexEvent(self._seq[wid], ekind, hashes))
            cache.events.clear()
            self.index.apply(wid, WorkerUpdate(_INCARNATION, self._seq[wid], events))
        if self._busy:
            self.loop.after(self.config.index_poll_s, self._poll_index, wid)

    # -- worker hooks -------------------------------------------------------------------

    def push(self, job: Job, src: PrefillWorker, start: float, end: float) -> None:
        """Move the KV the decode worker lacks while the prompt computes over [start, end]:
        layer-wise, so it ends at max(link time from when the link is free, the pass's end
        plus one layer's share); one push at a time per direction per port."""
        decode = job.decode
        if decode is None:
            raise RuntimeError(f"request {job.rid} pushed before admission")
        tier = tier_between(src.labels, decode.labels)
        lacking = job.req.input_tokens - job.decode_hit_blocks * self.block_tokens
        nbytes = lacking * self.gpu.kv_bytes_per_token
        wire = nbytes / self.links.bandwidth(tier)
        nvlink = LinkModel.uses_nvlink(tier)
        out_key, in_key = (src.id, nvlink, "out"), (decode.id, nvlink, "in")
        begin = max(start, self._port_free.get(out_key, 0.0), self._port_free.get(in_key, 0.0))
        self._port_free[out_key] = self._port_free[in_key] = begin + wire
        done = max(begin + wire, end + wire / self.gpu.layers) + self.links.latency_s[tier]
        job.tier = tier
        job.kv_bytes = nbytes
        job.wire_s = wire + self.links.latency_s[tier]
        self.loop.at(done, self._pushed, job, src)

    def _pushed(self, job: Job, src: PrefillWorker) -> None:
        decode = job.decode
        if decode is None:
            raise RuntimeError(f"request {job.rid} pushed before admission")
        src.cache.free(job.rid)
        src.record.in_flight -= 1
        src.record.in_flight_prefill_tokens -= job.prefill_tokens
        feed = self.config.bandwidth_feed
        if feed != "none":
            # NOTE: "wire" is what the router learns (a transfer record's wire_seconds: the
            # link alone); "push" is the record's whole duration, timed from the Prefill
            # call's start, so queueing and compute count. The router reads the record at
            # its next poll.
            seconds = self.loop.now - job.sent_at if feed == "push" else job.wire_s
            self._transfers[src.id].append((decode.id, job.kv_bytes, seconds, job.tier))
        self.first_token(job)
        decode.kv_arrived(job)
        src.memory_freed()

    def first_token(self, job: Job) -> None:
        job.first_token_at = self.loop.now

    def finished(self, job: Job) -> None:
        job.finished_at = self.loop.now
        decode = job.decode
        if decode is None or job.first_token_at is None:
            raise RuntimeError(f"request {job.rid} finished before it started")
        decode.record.in_flight -= 1
        self.results.append(RequestRecord.from_job(job))
        # NOTE: only this decode worker changed; if it cannot take the backlog's head,
        # asking the policy again would be refused everywhere as before.
        if self.backlog and decode.can_admit(self.backlog[0]):
            self._drain_backlog()
