"""Pickers: the last stage, choosing one option from the scored candidates."""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence

from ..workers import WorkerId
from .candidates import RolePools
from .joint import Joint, Scored
from .types import Placement

_TIE = 1e-9


_score = operator.attrgetter("score")


class MaxScore:
    """The best-scoring option among the shortlisted pairs and whole runs; ties at random.

    NOTE: pairs are scored for the `shortlist` best prefill workers x the `shortlist` best
    decode workers (by their own scores) plus, per prefill worker, the best decode workers
    near it: O(shortlist^2) pair scores however large the cluster."""

    def __init__(self, shortlist: int, local: int, rng: random.Random) -> None:
        self.shortlist = shortlist
        self.local = local
        self.rng = rng

    def pick(
        self, decode: Sequence[Scored], prefill: Sequence[Scored], joint: Joint, pools: RolePools
    ) -> Placement:
        best: list[tuple[float, Scored | None, Scored, float]] = []
        top = -1.0

        def offer(score: float, p: Scored | None, d: Scored, est: float) -> None:
            nonlocal top
            if score > top + _TIE:
                top = score
                best.clear()
            if score >= top - _TIE:
                best.append((score, p, d, est))

        split = joint.mark(decode)
        if len(split) < len(decode):
            for d in decode:  # every whole run: equal ones are a tie, broken at random
                if d.whole:
                    offer(joint.whole_score(d), None, d, 0.0)
        if split and prefill:
            k = self.shortlist
            top_d = sorted(split, key=_score, reverse=True)[:k]
            top_p = sorted(prefill, key=_score, reverse=True)[:k]
            split_ids = [d.worker.info.worker_id for d in split] if self.local else []
            for p in top_p:
                partners = self._partners(p, top_d, split, split_ids, pools)
                for score, d, est in joint.pair_scores(p, partners):
                    offer(score, p, d, est)
        if not best:  # no compatible pair: the best decode worker computes the prompt
            d = max(decode, key=_score)
            return joint.whole(d, joint.whole_score(d))
        score, chosen_p, chosen_d, est = best[0] if len(best) == 1 else self.rng.choice(best)
        if chosen_p is None:
            return joint.whole(chosen_d, score)
        return joint.pair(chosen_p, chosen_d, score, est)

    def _partners(
        self,
        p: Scored,
        top_d: Sequence[Scored],
        split: Sequence[Scored],
        split_ids: Sequence[WorkerId],
        pools: RolePools,
    ) -> list[Scored]:
        """`top_d`, then up to `local` of the best split candidates near p (not in top_d)."""
        if not self.local:
            return list(top_d)
        near = pools.near_ids(p.worker)
        local = [d for d, wid in zip(split, split_ids, strict=True) if wid in near]
        if len(local) > self.local:
            local = sorted(local, key=_score, reverse=True)[: self.local]
        seen = {id(d) for d in top_d}
        return [*top_d, *(d for d in local if id(d) not in seen)]


class RandomPick:
    """A uniform eligible decode worker, then (unless it runs whole) a uniform prefill
    worker among those compatible with it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(
        self, decode: Sequence[Scored], prefill: Sequence[Scored], joint: Joint, pools: RolePools
    ) -> Placement:
        d = self.rng.choice(decode)
        joint.mark([d])
        if d.whole:
            return joint.whole(d)
        partners = [p for p in prefill if joint.pair_ok(p, d)]
        return joint.pair(self.rng.choice(partners), d) if partners else joint.whole(d)


class RoundRobin:
    """Each side in turn, in worker id order (the next id after the last one picked)."""

    def __init__(self) -> None:
        self._last: dict[str, WorkerId] = {}

    def _next(self, side: str, options: Sequence[Scored]) -> Scored:
        ordered = sorted(options, key=lambda s: s.worker.info.worker_id)
        last = self._last.get(side)
        chosen = ordered[0]
        if last is not None:
            chosen = next((s for s in ordered if s.worker.info.worker_id > last), ordered[0])
        self._last[side] = chosen.worker.info.worker_id
        return chosen

    def pick(
        self, decode: Sequence[Scored], prefill: Sequence[Scored], joint: Joint, pools: RolePools
    ) -> Placement:
        d = self._next("decode", decode)
        joint.mark([d])
        if d.whole:
            return joint.whole(d)
        partners = [p for p in prefill if joint.pair_ok(p, d)]
        return joint.pair(self._next("prefill", partners), d) if partners else joint.whole(d)
