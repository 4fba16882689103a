"""The placement pipeline: candidates -> filters -> scorers -> picker, built from a
`PlacementConfig`. One instance per router (or simulated router); `place` is pure apart
from the seeded random generator and the cached role pools."""

from __future__ import annotations

import operator
import random
from collections.abc import Mapping, Sequence

from ..kv_index import PrefixHits
from ..workers import WorkerId, WorkerRecord, WorkerState
from .candidates import PoolCache, RolePools, draw, top_holders
from .config import PlacementConfig, build_filter, build_scorer
from .filters import Healthy, NotExcluded, PairFilter, WorkerFilter
from .joint import Joint, Scored
from .pickers import MaxScore, RandomPick, RoundRobin
from .scorers import PairScorer, RequestFacts, Side, WorkerScorer
from .types import ClusterView, NoEligibleWorkersError, Placement, PlacementRequest

_NO_HITS: Mapping[WorkerId, int] = {}


class Pipeline:
    """A `PlacementPolicy` configured by data (see config.py and builtin.py)."""

    def __init__(self, config: PlacementConfig) -> None:
        self.config = config
        filters = [build_filter(spec) for spec in config.filters]
        # NOTE: healthy and not_excluded (always present) run inline in _eligible.
        self._worker_filters = [
            f
            for f in filters
            if isinstance(f, WorkerFilter) and not isinstance(f, Healthy | NotExcluded)
        ]
        self._pair_filters = [f for f in filters if isinstance(f, PairFilter)]
        self._side_scorers: dict[Side, list[tuple[WorkerScorer, float]]] = {
            Side.PREFILL: [],
            Side.DECODE: [],
        }
        self._pair_scorers: list[tuple[PairScorer, float]] = []
        for spec in config.scorers:
            if spec.weight <= 0:
                continue
            scorer = build_scorer(spec)
            if isinstance(scorer, PairScorer):
                self._pair_scorers.append((scorer, spec.weight))
            else:
                self._side_scorers[scorer.side].append((scorer, spec.weight))
        # NOTE: bound once here, not per decision (Joint scores every shortlisted pair)
        self._pair_terms = [(s.score_pair, w) for s, w in self._pair_scorers]
        self._pair_checks = [f.accepts_pair for f in self._pair_filters]
        self._weights = {
            "prefill": sum(w for _, w in self._side_scorers[Side.PREFILL]),
            "decode": sum(w for _, w in self._side_scorers[Side.DECODE]),
            "pair": sum(w for _, w in self._pair_scorers),
        }
        self.uses_hits = any(s.uses_hits for side in self._side_scorers.values() for s, _ in side)
        """Whether decisions ask the view for prefix hits (policies without a cache
        scorer ignore the index, conditional disaggregation included)."""
        self._rng = random.Random(config.seed)
        self._pools = PoolCache()
        self._picker: MaxScore | RandomPick | RoundRobin
        if config.picker == "random":
            self._picker = RandomPick(self._rng)
        elif config.picker == "round_robin":
            self._picker = RoundRobin()
        else:
            self._picker = MaxScore(config.shortlist, config.local_candidates, self._rng)

    def place(self, request: PlacementRequest, view: ClusterView) -> Placement:
        config = self.config
        records = view.workers()
        pools = self._pools.get(records)
        hits = (
            view.prefix_hits(request.block_hashes)
            if self.uses_hits and request.block_hashes
            else _NO_HITS
        )
        facts = RequestFacts(
            request.num_prompt_tokens, len(request.block_hashes), request.block_size
        )
        prefill = (
            []  # every decode worker runs a prompt this short whole: no prefill to choose
            if request.num_prompt_tokens <= config.short_prompt_tokens
            else self._side(
                Side.PREFILL, pools.prefill, pools.prefill_ids, pools, hits, request, facts
            )
        )
        extra: list[WorkerRecord] = []
        k, limit = config.local_candidates, config.candidates
        if k and limit and len(pools.decode) > limit and prefill:
            choices = self._rng.choices
            for p in sorted(prefill, key=_score, reverse=True)[: config.shortlist]:
                near = pools.near_decode(p.worker)
                extra.extend(choices(near, k=k) if k < len(near) else near)
        decode = self._side(
            Side.DECODE, pools.decode, pools.decode_ids, pools, hits, request, facts, extra
        )
        if not decode:
            raise NoEligibleWorkersError(
                f"no decode-capable worker is available ({len(records)} registered,"
                f" {len(request.exclude)} excluded after failures)"
            )
        joint = Joint(
            view,
            facts,
            config.short_prompt_tokens,
            self._pair_checks,
            self._pair_terms,
            self._weights,
            has_prefill=bool(prefill),
        )
        return self._picker.pick(decode, prefill, joint, pools)

    def _side(
        self,
        side: Side,
        pool: list[WorkerRecord],
        ids: frozenset[WorkerId],
        pools: RolePools,
        hits: Mapping[WorkerId, int],
        request: PlacementRequest,
        facts: RequestFacts,
        extra: Sequence[WorkerRecord] = (),
    ) -> list[Scored]:
        """Eligible candidates of one side, scored."""
        if not pool:
            return []
        limit = self.config.candidates
        if limit == 0 or len(pool) <= limit:
            drawn = pool
        else:
            holders = top_holders(hits, ids, max(1, limit // 2)) if hits else []
            drawn = draw(pool, limit, self._rng, holders, pools.by_id, extra)
        eligible = self._eligible(drawn, request)
        if not eligible and drawn is not pool:  # "nobody" must mean nobody, not "unlucky"
            eligible = self._eligible(pool, request)
        if isinstance(hits, PrefixHits):
            counts = hits.counts([w.info.worker_id for w in eligible])
        elif hits:
            counts = [hits.get(w.info.worker_id, 0) for w in eligible]
        else:
            counts = [0] * len(eligible)
        totals = [0.0] * len(eligible)
        for scorer, weight in self._side_scorers[side]:
            totals = scorer.add_many(totals, weight, eligible, counts, facts)
        return list(map(Scored, eligible, totals, counts))

    def _eligible(
        self, workers: Sequence[WorkerRecord], request: PlacementRequest
    ) -> list[WorkerRecord]:
        healthy, exclude = WorkerState.HEALTHY, request.exclude
        if exclude:
            out = [w for w in workers if w.state is healthy and w.info.worker_id not in exclude]
        else:
            out = [w for w in workers if w.state is healthy]
        for f in self._worker_filters:
            out = [w for w in out if f.accepts(w, request)]
        return out


_score = operator.attrgetter("score")


def build_policy(config: PlacementConfig) -> Pipeline:
    """The policy a config declares."""
    return Pipeline(config)
