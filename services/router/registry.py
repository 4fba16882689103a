"""The router's worker registry: register, heartbeat, expire. Pure; time is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from .workers import WorkerId, WorkerInfo, WorkerLoad, WorkerRecord, WorkerState


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    ttl_s: float = 6.0
    """A worker silent this long is dropped: three missed heartbeats at the default 2 s."""

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {self.ttl_s}")


class DuplicateWorkerError(ValueError):
    """A worker id that a live worker at another address already holds."""


class UnknownWorkerError(KeyError):
    """A heartbeat from a worker the registry does not know (it should re-register)."""


class Registry:
    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self._workers: dict[WorkerId, WorkerRecord] = {}
        self._view: list[WorkerRecord] | None = None
        """records_view()'s list, dropped whenever a worker comes or goes."""

    def register(self, info: WorkerInfo, load: WorkerLoad, now: float) -> None:
        """Add a worker, or replace one that re-registers under the same id (a restart)."""
        if not info.worker_id:
            raise ValueError("worker_id must be non-empty")
        if not info.address:
            raise ValueError(f"worker {info.worker_id!r} has no address")
        previous = self._workers.get(info.worker_id)
        if (
            previous is not None
            and previous.info.address != info.address
            and now - previous.last_seen <= self.config.ttl_s
        ):
            # Two live workers under one id would heartbeat each other's record alive.
            # A worker that moved (a restart elsewhere) gets in once the old one expires.
            raise DuplicateWorkerError(
                f"worker id {info.worker_id!r} is held by a live worker at"
                f" {previous.info.address}; give each worker a unique --worker-id"
            )
        record = WorkerRecord(info, load, now)
        if previous is not None and previous.info.address == info.address:
            record.in_flight = previous.in_flight  # the router's requests there still run
            record.in_flight_prefill_tokens = previous.in_flight_prefill_tokens
            if previous.info.incarnation == info.incarnation:
                # The same process again (its labels changed, or this router forgot it):
                # a draining worker stays draining. A restart (new incarnation) is new.
                record.state = previous.state
        self._workers[info.worker_id] = record
        self._view = None

    def heartbeat(
        self, worker_id: WorkerId, load: WorkerLoad, now: float, *, draining: bool = False
    ) -> None:
        record = self._workers.get(worker_id)
        if record is None:
            raise UnknownWorkerError(worker_id)
        record.load = load
        record.last_seen = now
        if draining:
            record.state = WorkerState.DRAINING

    def set_draining(self, worker_id: WorkerId) -> None:
        record = self._workers.get(worker_id)
        if record is not None:
            record.state = WorkerState.DRAINING

    def remove(self, worker_id: WorkerId) -> bool:
        self._view = None
        return self._workers.pop(worker_id, None) is not None

    def expire(self, now: float) -> list[WorkerRecord]:
        """Drop workers not heard from within the TTL; returns their records."""
        dead = [r for r in self._workers.values() if now - r.last_seen > self.config.ttl_s]
        for record in dead:
            del self._workers[record.info.worker_id]
        if dead:
            self._view = None
        return dead

    def get(self, worker_id: WorkerId) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def records(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def records_view(self) -> list[WorkerRecord]:
        """The records as one list object that stays the same until a worker comes or
        goes (placement caches per-role pools by its identity). Do not modify it."""
        if self._view is None:
            self._view = list(self._workers.values())
        return self._view

    def placed(self, worker_id: WorkerId, delta: int, prefill_tokens: int = 0) -> None:
        """Count a request placed on (+1) or finished on (-1) a worker, with the prompt
        tokens it gives (+) or no longer gives (-) that worker to prefill."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.in_flight = max(0, record.in_flight + delta)
            record.in_flight_prefill_tokens = max(
                0, record.in_flight_prefill_tokens + prefill_tokens
            )
