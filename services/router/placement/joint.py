"""One decision's shared facts: scored candidates on each side, and how a (prefill,
decode) pair or a whole run on a decode worker scores. Used by every picker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kvferry.topology import tier_between

from ..workers import WorkerRecord
from .scorers import RequestFacts
from .types import ClusterView, Placement

PairCheck = Callable[[WorkerRecord, WorkerRecord], bool]
PairTerm = Callable[[float], float]


@dataclass(slots=True)
class Scored:
    worker: WorkerRecord
    score: float
    """Weighted sum of this side's scorers (not yet divided by the total weight)."""
    hits: int
    """Leading prompt blocks it caches."""
    whole: bool = False
    """Decode side: it would run the request whole (set by the picker via Joint)."""
    kv_bytes: int = 0
    """Decode side: KV bytes a prefill worker must send it."""


class Joint:
    """Scores the options of one decision.

    An option is a pair (p, d) or a whole run on d. Conditional disaggregation is a rule
    per decode worker: d runs the request whole when the part of the prompt it does not
    cache is at most `short_prompt_tokens` (or when no prefill worker is eligible); then
    its prefill-side and pair terms count as perfect (it waits on no prefill queue and
    moves no KV). Option scores are weighted sums divided by the total weight: [0, 1].
    """

    def __init__(
        self,
        view: ClusterView,
        facts: RequestFacts,
        short_prompt_tokens: int,
        pair_checks: Sequence[PairCheck],
        pair_terms: Sequence[tuple[PairTerm, float]],
        weights: Mapping[str, float],
        has_prefill: bool,
    ) -> None:
        self.view = view
        self.facts = facts
        self.short_prompt_tokens = short_prompt_tokens
        self.pair_checks = pair_checks
        """Each pair filter's `accepts_pair`."""
        self.pair_terms = pair_terms
        """(each pair scorer's `score_pair`, its weight)."""
        self._w_prefill = weights["prefill"]
        self._w_pair = weights["pair"]
        total = weights["prefill"] + weights["decode"] + weights["pair"]
        self._norm = 1.0 / total if total > 0 else 0.0
        self.has_prefill = has_prefill

    def pair_ok(self, p: Scored, d: Scored) -> bool:
        return all(check(p.worker, d.worker) for check in self.pair_checks)

    def whole_score(self, d: Scored) -> float:
        return (d.score + self._w_prefill + self._w_pair) * self._norm

    def mark(self, decode: Sequence[Scored]) -> list[Scored]:
        """Fill each decode candidate's `whole` (conditional disaggregation, on the prompt
        tokens it does not cache) and `kv_bytes` (what a prefill worker must send it: that
        uncached part x its KV bytes per token). Returns the candidates that would take a
        prefill hop (not whole), in order."""
        tokens, bs, short = (
            self.facts.num_prompt_tokens,
            self.facts.block_size,
            self.short_prompt_tokens,
        )
        split: list[Scored] = []
        if not self.has_prefill:
            for d in decode:
                d.whole, d.kv_bytes = True, 0
            return split
        for d in decode:
            info = d.worker.info
            uncached = tokens - d.hits * (bs or info.block_size)
            if uncached <= short:  # also when everything is cached (uncached <= 0)
                d.whole, d.kv_bytes = True, 0
            else:
                d.whole = False
                block_size = info.block_size
                d.kv_bytes = uncached * info.kv_bytes_per_block // block_size if block_size else 0
                split.append(d)
        return split

    def pair_scores(
        self, p: Scored, partners: Sequence[Scored]
    ) -> list[tuple[float, Scored, float]]:
        """(option score, d, estimated transfer seconds) for each compatible marked d."""
        transfer = self.view.transfer_s
        terms, checks = self.pair_terms, self.pair_checks
        pw, base, norm = p.worker, p.score, self._norm
        out = []
        for d in partners:
            dw = d.worker
            for check in checks:
                if not check(pw, dw):
                    break
            else:
                est = transfer(pw, dw, d.kv_bytes)
                total = base + d.score
                for term, weight in terms:
                    total += weight * term(est)
                out.append((total * norm, d, est))
        return out

    def whole(self, d: Scored, score: float = 0.0) -> Placement:
        return Placement(
            d.worker.info.worker_id,
            None,
            prefill_hit_blocks=d.hits,
            decode_hit_blocks=d.hits,
            score=score,
        )

    def pair(self, p: Scored, d: Scored, score: float = 0.0, est: float | None = None) -> Placement:
        if est is None:
            est = self.view.transfer_s(p.worker, d.worker, d.kv_bytes)
        return Placement(
            d.worker.info.worker_id,
            p.worker.info.worker_id,
            prefill_hit_blocks=p.hits,
            decode_hit_blocks=d.hits,
            tier=tier_between(p.worker.info.labels, d.worker.info.labels),
            est_transfer_s=est,
            score=score,
        )
