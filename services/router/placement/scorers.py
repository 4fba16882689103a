"""Scorers: how good a worker (or a pair) is for a request, each normalised to [0, 1]
(1 best). The pipeline multiplies each by its weight and sums.

Normalisations are absolute, not relative to the other candidates, so a worker's score
does not depend on who else was sampled, and a score means the same in every cluster:
- fractions (prefix hits, free KV) are already in [0, 1];
- costs c >= 0 (queued tokens, busy slots, transfer seconds) become 1 / (1 + c / scale):
  1 at no cost, 0.5 at `scale`, towards 0 beyond. `scale` is the parameter to tune.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..workers import WorkerRecord


class Side(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    PAIR = "pair"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the scorers need to know about the request being placed."""

    num_prompt_tokens: int
    num_blocks: int
    """Full blocks of the prompt with a hash (the denominator of hit fractions)."""
    block_size: int
    """Tokens per block (0: unknown; the decode worker's own is used)."""


def _cost_score(cost: float, scale: float) -> float:
    return 1.0 / (1.0 + cost / scale) if cost > 0 else 1.0


class WorkerScorer:
    """Scores one worker; `hits` is how many leading prompt blocks it caches."""

    name: ClassVar[str]
    side: ClassVar[Side]
    params: ClassVar[tuple[str, ...]] = ()
    uses_hits: ClassVar[bool] = False

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        raise NotImplementedError

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        """`score` of each worker (built-ins override it with one comprehension: the
        decision's hot loop)."""
        return [self.score(w, n, facts) for w, n in zip(workers, hits, strict=True)]


class PairScorer:
    """Scores a (prefill, decode) pair from the estimated transfer time between them."""

    name: ClassVar[str]
    side: ClassVar[Side] = Side.PAIR
    params: ClassVar[tuple[str, ...]] = ()

    def score_pair(self, transfer_s: float) -> float:
        raise NotImplementedError


def _hit_fraction(hits: int, facts: RequestFacts) -> float:
    if facts.num_blocks <= 0:
        return 0.0
    return min(hits, facts.num_blocks) / facts.num_blocks


def _hit_fractions(hits: Sequence[int], facts: RequestFacts) -> list[float]:
    n = facts.num_blocks
    if n <= 0:
        return [0.0] * len(hits)
    return [min(h, n) / n for h in hits]


class PrefixHits(WorkerScorer):
    """Prefill side: the fraction of the prompt's blocks its prefix cache holds (work it
    will not recompute)."""

    name = "prefix_hits"
    side = Side.PREFILL
    uses_hits = True

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        return _hit_fraction(hits, facts)

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        return _hit_fractions(hits, facts)


class DecodePrefixHits(WorkerScorer):
    """Decode side: the fraction of the prompt's blocks it already caches (KV that need
    not move, or that a whole run there skips)."""

    name = "decode_prefix_hits"
    side = Side.DECODE
    uses_hits = True

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        return _hit_fraction(hits, facts)

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        return _hit_fractions(hits, facts)


@dataclass(frozen=True, slots=True)
class QueuedPrefillTokens(WorkerScorer):
    """Prefill side: prompt tokens queued ahead of this request.

    The heartbeat's `prefill_tokens_waiting` lags; the router's own in-flight count is
    fresh, so the estimate is the larger of the report and in_flight x
    `in_flight_tokens`."""

    token_scale: float = 4096.0
    in_flight_tokens: float = 512.0
    name = "queued_prefill_tokens"
    side = Side.PREFILL
    params = ("token_scale", "in_flight_tokens")

    def __post_init__(self) -> None:
        if not self.token_scale > 0:
            raise ValueError(f"token_scale must be positive, got {self.token_scale}")
        if self.in_flight_tokens < 0:
            raise ValueError(f"in_flight_tokens must be >= 0, got {self.in_flight_tokens}")

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        queued = max(worker.load.prefill_tokens_waiting, worker.in_flight * self.in_flight_tokens)
        return _cost_score(queued, self.token_scale)

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        per, scale = self.in_flight_tokens, self.token_scale
        return [
            scale / (scale + max(w.load.prefill_tokens_waiting, w.in_flight * per)) for w in workers
        ]


class FreeKVBlocks(WorkerScorer):
    """Decode side: the fraction of its KV pool free (room for this request to grow)."""

    name = "free_kv_blocks"
    side = Side.DECODE

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        total = worker.load.total_kv_blocks
        return worker.load.free_kv_blocks / total if total > 0 else 0.0

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        loads = [w.load for w in workers]
        return [x.free_kv_blocks / x.total_kv_blocks if x.total_kv_blocks else 0.0 for x in loads]


@dataclass(frozen=True, slots=True)
class RunningLoad(WorkerScorer):
    """Decode side: sequences running or waiting there, plus the router's requests placed
    there since its last report (every extra sequence slows each decode step)."""

    load_scale: float = 8.0
    name = "running_load"
    side = Side.DECODE
    params = ("load_scale",)

    def __post_init__(self) -> None:
        if not self.load_scale > 0:
            raise ValueError(f"load_scale must be positive, got {self.load_scale}")

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        load = worker.load
        return _cost_score(load.num_running + load.num_waiting + worker.in_flight, self.load_scale)

    def score_many(
        self, workers: Sequence[WorkerRecord], hits: Sequence[int], facts: RequestFacts
    ) -> list[float]:
        scale = self.load_scale
        return [
            scale / (scale + w.load.num_running + w.load.num_waiting + w.in_flight) for w in workers
        ]


@dataclass(frozen=True, slots=True)
class TransferTime(PairScorer):
    """Pair: estimated seconds to move the KV the decode worker lacks from the prefill
    worker (bytes / the pair's measured or tier bandwidth)."""

    time_scale_s: float = 0.01
    name = "transfer_time"
    params = ("time_scale_s",)

    def __post_init__(self) -> None:
        if not self.time_scale_s > 0:
            raise ValueError(f"time_scale_s must be positive, got {self.time_scale_s}")

    def score_pair(self, transfer_s: float) -> float:
        return _cost_score(transfer_s, self.time_scale_s)


WORKER_SCORERS: dict[str, type[WorkerScorer]] = {
    s.name: s
    for s in (PrefixHits, DecodePrefixHits, QueuedPrefillTokens, FreeKVBlocks, RunningLoad)
}
PAIR_SCORERS: dict[str, type[PairScorer]] = {s.name: s for s in (TransferTime,)}
