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
import operator
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


_load = operator.attrgetter("load")


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

    def add_many(
        self,
        totals: list[float],
        weight: float,
        workers: Sequence[WorkerRecord],
        hits: Sequence[int],
        facts: RequestFacts,
    ) -> list[float]:
        """`totals[i] + weight * score(workers[i], hits[i])` for each worker.

        NOTE: built-ins override it with one comprehension (the decision's hot loop: one
        pass per scorer, no intermediate list, zip unchecked: the pipeline passes
        equal lengths); a test pins each against `score`."""
        return [
            t + weight * self.score(w, n, facts)
            for t, w, n in zip(totals, workers, hits, strict=True)
        ]


class PairScorer:
    """Scores a (prefill, decode) pair from the estimated transfer time between them."""

    name: ClassVar[str]
    side: ClassVar[Side] = Side.PAIR
    params: ClassVar[tuple[str, ...]] = ()

    def score_pair(self, transfer_s: float) -> float:
        raise NotImplementedError


class _HitFraction(WorkerScorer):
    """The fraction of the prompt's full blocks a worker's prefix cache holds."""

    uses_hits = True

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        n = facts.num_blocks
        return min(hits, n) / n if n > 0 else 0.0

    def add_many(
        self,
        totals: list[float],
        weight: float,
        workers: Sequence[WorkerRecord],
        hits: Sequence[int],
        facts: RequestFacts,
    ) -> list[float]:
        n = facts.num_blocks
        if n <= 0:
            return list(totals)
        return [t + weight * ((h if h < n else n) / n) for t, h in zip(totals, hits, strict=False)]


class PrefixHits(_HitFraction):
    """Prefill side: the fraction of the prompt's blocks its prefix cache holds (work it
    will not recompute)."""

    name = "prefix_hits"
    side = Side.PREFILL


class DecodePrefixHits(_HitFraction):
    """Decode side: the fraction of the prompt's blocks it already caches (KV that need
    not move, or that a whole run there skips)."""

    name = "decode_prefix_hits"
    side = Side.DECODE


@dataclass(frozen=True, slots=True)
class QueuedPrefillTokens(WorkerScorer):
    """Prefill side: prompt tokens queued ahead of this request.

    The heartbeat's `prefill_tokens_waiting` lags; the router's own counts are fresh: the
    prompt tokens it has sent there and not seen return (`in_flight_prefill_tokens`), and
    at least `in_flight_tokens` per request in flight (a floor for a caller that does not
    count tokens, and for a request's fixed costs). The estimate is the largest of the
    three: all of them count the same queue."""

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
        queued = max(
            worker.load.prefill_tokens_waiting,
            worker.in_flight_prefill_tokens,
            worker.in_flight * self.in_flight_tokens,
        )
        return _cost_score(queued, self.token_scale)

    def add_many(
        self,
        totals: list[float],
        weight: float,
        workers: Sequence[WorkerRecord],
        hits: Sequence[int],
        facts: RequestFacts,
    ) -> list[float]:
        per, scale = self.in_flight_tokens, self.token_scale
        queued = [
            max(w.load.prefill_tokens_waiting, w.in_flight_prefill_tokens, w.in_flight * per)
            for w in workers
        ]
        return [t + weight * (scale / (scale + q)) for t, q in zip(totals, queued, strict=False)]


class FreeKVBlocks(WorkerScorer):
    """Decode side: the fraction of its KV pool free (room for this request to grow)."""

    name = "free_kv_blocks"
    side = Side.DECODE

    def score(self, worker: WorkerRecord, hits: int, facts: RequestFacts) -> float:
        total = worker.load.total_kv_blocks
        return worker.load.free_kv_blocks / total if total > 0 else 0.0

    def add_many(
        self,
        totals: list[float],
        weight: float,
        workers: Sequence[WorkerRecord],
        hits: Sequence[int],
        facts: RequestFacts,
    ) -> list[float]:
        return [
            t + weight * (x.free_kv_blocks / x.total_kv_blocks if x.total_kv_blocks else 0.0)
            for t, x in zip(totals, map(_load, workers), strict=False)
        ]


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

    def add_many(
        self,
        totals: list[float],
        weight: float,
        workers: Sequence[WorkerRecord],
        hits: Sequence[int],
        facts: RequestFacts,
    ) -> list[float]:
        scale = self.load_scale
        return [
            t + weight * (scale / (scale + w.load.num_running + w.load.num_waiting + w.in_flight))
            for t, w in zip(totals, workers, strict=False)
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
        # NOTE: _cost_score inlined (once per scored pair)
        return 1.0 / (1.0 + transfer_s / self.time_scale_s) if transfer_s > 0 else 1.0


WORKER_SCORERS: dict[str, type[WorkerScorer]] = {
    s.name: s
    for s in (PrefixHits, DecodePrefixHits, QueuedPrefillTokens, FreeKVBlocks, RunningLoad)
}
PAIR_SCORERS: dict[str, type[PairScorer]] = {s.name: s for s in (TransferTime,)}
