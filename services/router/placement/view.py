"""ClusterView implementations: the router's (live registry, KV index, measured
bandwidth) and a static one for tests, benchmarks and the simulator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..kv_index import KVIndex
from ..registry import Registry
from ..workers import WorkerId, WorkerRecord
from .bandwidth import BandwidthTable


class RouterView:
    """The router's cluster: registry records (the same list while membership is
    unchanged, so policies keep their role pools), the cluster KV index and the
    bandwidth table the poller feeds."""

    def __init__(self, registry: Registry, index: KVIndex, bandwidth: BandwidthTable) -> None:
        self.registry = registry
        self.index = index
        self.bandwidth = bandwidth

    def workers(self) -> Sequence[WorkerRecord]:
        return self.registry.records_view()

    def prefix_hits(self, block_hashes: Sequence[int]) -> Mapping[WorkerId, int]:
        return self.index.prefix_hits(block_hashes)

    def transfer_s(self, src: WorkerRecord, dst: WorkerRecord, nbytes: int) -> float:
        return self.bandwidth.transfer_s(src, dst, nbytes)


class StaticView:
    """A fixed list of workers, prefix hits from a KVIndex or a plain mapping per call
    (`hits`), and a bandwidth table."""

    def __init__(
        self,
        workers: Sequence[WorkerRecord],
        *,
        index: KVIndex | None = None,
        bandwidth: BandwidthTable | None = None,
    ) -> None:
        self._workers = list(workers)
        self.index = index
        self.bandwidth = bandwidth or BandwidthTable()
        self.hits: Mapping[WorkerId, int] = {}
        """Used when there is no index: the hits every query answers."""

    def workers(self) -> Sequence[WorkerRecord]:
        return self._workers

    def prefix_hits(self, block_hashes: Sequence[int]) -> Mapping[WorkerId, int]:
        if self.index is not None:
            return self.index.prefix_hits(block_hashes)
        return self.hits

    def transfer_s(self, src: WorkerRecord, dst: WorkerRecord, nbytes: int) -> float:
        return self.bandwidth.transfer_s(src, dst, nbytes)
