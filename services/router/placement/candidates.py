"""Which workers a decision looks at: role pools (cached while the worker list is the
same), and, in a large cluster, a bounded draw from them.

NOTE: scoring every worker costs O(workers) Python work per request (~0.3 ms at 1,000
workers). With `candidates: m` a decision scores at most about m workers per side: every
prefix-cache holder it can find (up to m/2, most blocks first), a seeded random sample of m
(power-of-d-choices: a few random probes balance load almost as well as a full scan), and
the decode workers near each shortlisted prefill worker. Below m workers per side it
scores them all, exactly.
"""

from __future__ import annotations

import heapq
import operator
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvferry.topology import NODE, NVLINK_DOMAIN

from ..kv_index import PrefixHits
from ..workers import Role, WorkerId, WorkerRecord


@dataclass(slots=True)
class RolePools:
    """The registered workers split by what they can do in a pair."""

    records: Sequence[WorkerRecord]
    prefill: list[WorkerRecord] = field(default_factory=list)
    """Dedicated prefill workers (mixed workers run whole requests, never the hop)."""
    decode: list[WorkerRecord] = field(default_factory=list)
    """Decode-capable workers (decode and mixed)."""
    prefill_ids: frozenset[WorkerId] = frozenset()
    decode_ids: frozenset[WorkerId] = frozenset()
    near: dict[tuple[str, str], list[WorkerRecord]] = field(default_factory=dict)
    """Decode workers by ("node", name) and ("nvlink_domain", name)."""
    by_id: dict[WorkerId, WorkerRecord] = field(default_factory=dict)
    _near_ids: dict[WorkerId, frozenset[WorkerId]] = field(default_factory=dict)
    _near_decode: dict[WorkerId, list[WorkerRecord]] = field(default_factory=dict)

    @classmethod
    def build(cls, records: Sequence[WorkerRecord]) -> RolePools:
        pools = cls(records)
        for w in records:
            role = w.info.role
            if role is Role.PREFILL:
                pools.prefill.append(w)
            elif role.can_decode:
                pools.decode.append(w)
                for key in (NODE, NVLINK_DOMAIN):
                    value = w.info.labels.get(key, "")
                    if value:
                        pools.near.setdefault((key, value), []).append(w)
        pools.by_id = {w.info.worker_id: w for w in records}
        pools.prefill_ids = frozenset(w.info.worker_id for w in pools.prefill)
        pools.decode_ids = frozenset(w.info.worker_id for w in pools.decode)
        return pools

    def near_decode(self, prefill: WorkerRecord) -> list[WorkerRecord]:
        """Decode workers on the same node, then in the same NVLink domain (cached per
        prefill worker, like the pools: do not modify the list)."""
        wid = prefill.info.worker_id
        out = self._near_decode.get(wid)
        if out is None:
            out = []
            for key in (NODE, NVLINK_DOMAIN):
                value = prefill.info.labels.get(key, "")
                if value:
                    out.extend(self.near.get((key, value), ()))
            self._near_decode[wid] = out
        return out

    def near_ids(self, prefill: WorkerRecord) -> frozenset[WorkerId]:
        """Ids of `near_decode(prefill)` (cached per prefill worker)."""
        wid = prefill.info.worker_id
        ids = self._near_ids.get(wid)
        if ids is None:
            ids = frozenset(w.info.worker_id for w in self.near_decode(prefill))
            self._near_ids[wid] = ids
        return ids


class PoolCache:
    """Rebuilds the role pools only when the worker list changed."""

    def __init__(self) -> None:
        self._pools = RolePools.build(())

    def get(self, records: Sequence[WorkerRecord]) -> RolePools:
        cached = self._pools.records
        if records is not cached and not (
            len(records) == len(cached) and all(map(operator.is_, records, cached))
        ):
            self._pools = RolePools.build(records)
        return self._pools


def top_holders(hits: Mapping[WorkerId, int], among: frozenset[WorkerId], k: int) -> list[WorkerId]:
    """Up to k workers of `among` holding the most leading blocks (k > 0)."""
    if isinstance(hits, PrefixHits):
        return hits.top(k, among.__contains__)
    return [
        w for w, _ in heapq.nlargest(k, ((w, n) for w, n in hits.items() if w in among), key=_count)
    ]


def _count(item: tuple[WorkerId, int]) -> int:
    return item[1]


def draw(
    pool: list[WorkerRecord],
    limit: int,
    rng: random.Random,
    holders: Sequence[WorkerId],
    by_id: Mapping[WorkerId, WorkerRecord],
    extra: Sequence[WorkerRecord] = (),
) -> list[WorkerRecord]:
    """All of `pool` when it is small (or limit is 0), else `holders` (cache holders from
    `top_holders`) + a random sample of `limit` + `extra`, without duplicates."""
    if limit == 0 or len(pool) <= limit:
        return pool
    # NOTE: keyed by record identity (one record per worker id in a pool): a sampled
    # worker's WorkerInfo is not read just to drop a repeat
    chosen: dict[int, WorkerRecord] = {}
    for wid in holders:
        record = by_id.get(wid)
        if record is not None:
            chosen[id(record)] = record
    # NOTE: with replacement (a repeat is dropped): cheaper than rng.sample, same spread
    for w in rng.choices(pool, k=limit):
        chosen.setdefault(id(w), w)
    for w in extra:
        chosen.setdefault(id(w), w)
    return list(chosen.values())
