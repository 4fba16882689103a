"""Filters: which workers (and pairs) may take a request at all. Each is a small class
built from its config entry; unknown parameters are refused by the config parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..workers import WorkerRecord, WorkerState
from .types import PlacementRequest


class WorkerFilter:
    """Keeps a worker (on either side) or drops it."""

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()

    def accepts(self, worker: WorkerRecord, request: PlacementRequest) -> bool:
        raise NotImplementedError


class PairFilter:
    """Keeps a (prefill, decode) pair or drops it."""

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()

    def accepts_pair(self, prefill: WorkerRecord, decode: WorkerRecord) -> bool:
        raise NotImplementedError


class Healthy(WorkerFilter):
    """Draining workers finish what they have and take nothing new."""

    name = "healthy"

    def accepts(self, worker: WorkerRecord, request: PlacementRequest) -> bool:
        return worker.state is WorkerState.HEALTHY


class NotExcluded(WorkerFilter):
    """A retry never goes back to a worker that already failed the request."""

    name = "not_excluded"

    def accepts(self, worker: WorkerRecord, request: PlacementRequest) -> bool:
        return worker.info.worker_id not in request.exclude


@dataclass(frozen=True, slots=True)
class MaxInFlight(WorkerFilter):
    """At most `limit` requests the router placed there and has not seen finish."""

    limit: int = 64
    name = "max_in_flight"
    params = ("limit",)

    def __post_init__(self) -> None:
        if self.limit != int(self.limit):
            raise ValueError(f"limit must be a whole number, got {self.limit}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")

    def accepts(self, worker: WorkerRecord, request: PlacementRequest) -> bool:
        return worker.in_flight < self.limit


@dataclass(frozen=True, slots=True)
class KVCapacity(WorkerFilter):
    """Decode-capable workers whose last report shows fewer than `min_free_blocks` free KV
    blocks are skipped (prefill-only workers pass: their KV is transient).

    NOTE: reports lag by a heartbeat; when it drops every decode worker the request is
    refused at once (UNAVAILABLE) instead of queueing, so it is not in the built-ins."""

    min_free_blocks: int = 1
    name = "kv_capacity"
    params = ("min_free_blocks",)

    def __post_init__(self) -> None:
        if self.min_free_blocks != int(self.min_free_blocks):
            raise ValueError(f"min_free_blocks must be a whole number, got {self.min_free_blocks}")
        if self.min_free_blocks < 0:
            raise ValueError(f"min_free_blocks must be >= 0, got {self.min_free_blocks}")

    def accepts(self, worker: WorkerRecord, request: PlacementRequest) -> bool:
        if not worker.info.role.can_decode:
            return True
        return worker.load.free_kv_blocks >= self.min_free_blocks


class CompatibleLayout(PairFilter):
    """KV moves only between workers with the same block size and bytes per block (a
    mismatch would fail the Prefill before any compute). Unreported values (0) pass."""

    name = "compatible_layout"

    def accepts_pair(self, prefill: WorkerRecord, decode: WorkerRecord) -> bool:
        a, b = prefill.info, decode.info
        if a.block_size and b.block_size and a.block_size != b.block_size:
            return False
        return not (
            a.kv_bytes_per_block
            and b.kv_bytes_per_block
            and a.kv_bytes_per_block != b.kv_bytes_per_block
        )


WORKER_FILTERS: dict[str, type[WorkerFilter]] = {
    f.name: f for f in (Healthy, NotExcluded, MaxInFlight, KVCapacity)
}
PAIR_FILTERS: dict[str, type[PairFilter]] = {f.name: f for f in (CompatibleLayout,)}
REQUIRED_FILTERS = (Healthy.name, NotExcluded.name)
