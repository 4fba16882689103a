"""Placement v1: pick the least-loaded (prefill, decode) pair. Pure and replaceable.

The decode worker is chosen first (it holds the request's KV for its whole life), then a
prefill worker. A request runs whole on its decode worker (no prefill hop) when its
prompt is short or when no prefill worker is eligible. "No eligible decode worker" is a
typed error that the servicer turns into UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvferry.errors import KvferryError

from .workers import Role, WorkerId, WorkerRecord, WorkerState


class NoEligibleWorkersError(KvferryError):
    """No worker can take this request now (none registered, all draining or excluded)."""


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    num_prompt_tokens: int
    exclude: frozenset[WorkerId] = field(default_factory=frozenset)
    """Workers that already failed this request (retries go elsewhere)."""


@dataclass(frozen=True, slots=True)
class Placement:
    decode: WorkerId
    prefill: WorkerId | None
    """None: the decode worker computes the prompt itself."""


class PlacementPolicy(Protocol):
    def place(self, request: PlacementRequest, workers: Sequence[WorkerRecord]) -> Placement: ...


@dataclass(frozen=True, slots=True)
class LeastLoadedConfig:
    short_prompt_tokens: int = 64
    """Prompts up to this length skip the prefill hop: moving their KV costs more than
    computing it where it will be decoded."""

    def __post_init__(self) -> None:
        if self.short_prompt_tokens < 0:
            raise ValueError(f"short_prompt_tokens must be >= 0, got {self.short_prompt_tokens}")


class LeastLoaded:
    def __init__(self, config: LeastLoadedConfig | None = None) -> None:
        self.config = config or LeastLoadedConfig()

    def place(self, request: PlacementRequest, workers: Sequence[WorkerRecord]) -> Placement:
        usable = [
            w
            for w in workers
            if w.state is WorkerState.HEALTHY and w.info.worker_id not in request.exclude
        ]
        decoders = [w for w in usable if w.info.role.can_decode]
        if not decoders:
            raise NoEligibleWorkersError(
                f"no decode-capable worker is available ({len(workers)} registered,"
                f" {len(request.exclude)} excluded after failures)"
            )
        decode = min(decoders, key=_decode_load)
        if request.num_prompt_tokens <= self.config.short_prompt_tokens:
            return Placement(decode.info.worker_id, None)
        # NOTE: mixed workers run whole requests; only dedicated prefill workers take the
        # prefill hop (a mixed-only cluster is the colocated baseline).
        prefillers = [w for w in usable if w.info.role is Role.PREFILL]
        if not prefillers:
            return Placement(decode.info.worker_id, None)
        prefill = min(prefillers, key=_prefill_load)
        return Placement(decode.info.worker_id, prefill.info.worker_id)


def _decode_load(w: WorkerRecord) -> tuple[int, int, str]:
    busy = w.in_flight + w.load.num_running + w.load.num_waiting
    return (busy, -w.load.free_kv_blocks, w.info.worker_id)


def _prefill_load(w: WorkerRecord) -> tuple[int, int, str]:
    return (w.load.prefill_tokens_waiting, w.in_flight + w.load.num_waiting, w.info.worker_id)
