"""How fast KV moves between two workers: a default per topology tier, replaced by what
real transfers between that pair measured (an exponentially weighted moving average).

Unmeasured pairs use the tier default scaled by how far measured transfers fall short of
their own tiers' defaults (a moving average of measured / default over every pair): on a
fleet whose links deliver a tenth of the nominal figures, an unmeasured rack pair is
assumed a tenth as fast too, so a measured near pair is never ranked below an unmeasured
far one just because one figure is real and the other nominal.

NOTE: what a pair learns is the push's *wire* time (`TransferRecord.wire_seconds`: the
push's duration minus the time it waited for the prefill to produce KV), so bytes / seconds
is the link's throughput, not the prefill's pace. Fed the whole push (which spans the
prompt's compute), every measured pair would average a prefill's KV production rate
(~4 GB/s on an H100) whatever its tier, and the transfer-time scorer would stop telling a
same-node pair from a cross-rack one (the simulator's `--bandwidth-feed push` shows it).
Pure; the poller feeds it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kvferry.topology import LABEL_KEYS, Tier

from ..workers import WorkerId, WorkerInfo, WorkerRecord

GB = 1e9

DEFAULT_TIER_GBPS: Mapping[str, float] = {
    # NOTE: nominal per-GPU figures for H100-class fleets (one direction, GB/s): NVLink
    # inside an HGX node; NVLink across an NVL72 domain's trays; a 400 Gb/s RDMA NIC to a
    # rack peer; the same NIC through a shared spine; cross-zone links. Measured pairs
    # replace them; set your own per fleet.
    Tier.SAME_NODE.label: 300.0,
    Tier.SAME_NVLINK_DOMAIN.label: 200.0,
    Tier.SAME_RACK.label: 50.0,
    Tier.SAME_ZONE.label: 25.0,
    Tier.ELSEWHERE.label: 5.0,
}


@dataclass(frozen=True, slots=True)
class TransferConfig:
    tier_gbps: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIER_GBPS))
    """Assumed bandwidth per tier (GB/s, 1e9 bytes) until a pair has measurements; keys
    are tier labels (same_node, same_nvlink_domain, same_rack, same_zone, elsewhere)."""
    ewma_alpha: float = 0.2
    """Weight of each new measurement in the pair's moving average (0 < alpha <= 1)."""
    min_bytes: int = 64 * 1024
    """Transfers smaller than this are not measured: their time is mostly latency."""
    min_samples: int = 1
    """Measured transfers a pair needs before its average replaces the tier default."""

    def __post_init__(self) -> None:
        known = {t.label for t in Tier}
        unknown = set(self.tier_gbps) - known
        if unknown:
            raise ValueError(
                f"transfer.tier_gbps: unknown tier {sorted(unknown)}; known: {sorted(known)}"
            )
        missing = known - set(self.tier_gbps)
        if missing:
            raise ValueError(f"transfer.tier_gbps: give every tier; missing {sorted(missing)}")
        for tier, gbps in self.tier_gbps.items():
            if not gbps > 0:
                raise ValueError(f"transfer.tier_gbps.{tier} must be positive, got {gbps}")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"transfer.ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if self.min_bytes < 0:
            raise ValueError(f"transfer.min_bytes must be >= 0, got {self.min_bytes}")
        if self.min_samples < 1:
            raise ValueError(f"transfer.min_samples must be at least 1, got {self.min_samples}")


@dataclass(slots=True)
class PairBandwidth:
    bytes_per_s: float
    samples: int


class BandwidthTable:
    """Per (source, destination) pair: measured bandwidth, else the tier's default."""

    def __init__(self, config: TransferConfig | None = None) -> None:
        self.config = config or TransferConfig()
        self._tier_bps = [self.config.tier_gbps[t.label] * GB for t in Tier]
        self._pairs: dict[tuple[WorkerId, WorkerId], PairBandwidth] = {}
        self.calibration = 1.0
        """Moving average of measured / tier default (scales every unmeasured pair)."""
        self._calibrated = False
        self._places: dict[WorkerId, tuple[WorkerInfo, tuple[str | None, ...]]] = {}
        self._cache: dict[tuple[WorkerId, WorkerId], float] = {}
        """Measured pairs' bytes/s, ready for lookup (unmeasured pairs: tier x calibration)."""

    def observe(
        self, src: WorkerId, dst: WorkerId, nbytes: int, seconds: float, tier: Tier | None = None
    ) -> bool:
        """Fold one finished transfer into the pair's average (and, given the pair's tier,
        into the calibration of the defaults); False when it is too small or has no
        duration to measure."""
        if nbytes < max(self.config.min_bytes, 1) or not seconds > 0:
            return False
        sample = nbytes / seconds
        if tier is not None:
            ratio = sample / self._tier_bps[tier]
            if self._calibrated:
                self.calibration += self.config.ewma_alpha * (ratio - self.calibration)
            else:
                self.calibration, self._calibrated = ratio, True
        pair = self._pairs.get((src, dst))
        if pair is None:
            pair = self._pairs[(src, dst)] = PairBandwidth(sample, 1)
        else:
            alpha = self.config.ewma_alpha
            pair.bytes_per_s += alpha * (sample - pair.bytes_per_s)
            pair.samples += 1
        if pair.samples >= self.config.min_samples:
            self._cache[(src, dst)] = pair.bytes_per_s
        return True

    def measured(self, src: WorkerId, dst: WorkerId) -> float | None:
        """The pair's measured bytes/s once it has `min_samples` transfers, else None."""
        pair = self._pairs.get((src, dst))
        if pair is None or pair.samples < self.config.min_samples:
            return None
        return pair.bytes_per_s

    def tier_bytes_per_s(self, tier: Tier) -> float:
        """The tier's assumed bandwidth: its default x the calibration."""
        return self._tier_bps[tier] * self.calibration

    def bytes_per_s(self, src: WorkerRecord, dst: WorkerRecord) -> float:
        a, b = src.info, dst.info
        if self._cache:
            measured = self._cache.get((a.worker_id, b.worker_id))
            if measured is not None:
                return measured
        return self._tier_bps[self._tier_of(a, b)] * self.calibration

    def _tier(self, src: WorkerRecord, dst: WorkerRecord) -> int:
        """`tier_between` of two workers' labels (see `_tier_of`)."""
        return self._tier_of(src.info, dst.info)

    def _tier_of(self, a: WorkerInfo, b: WorkerInfo) -> int:
        """`tier_between` on per-worker label tuples cached by WorkerInfo identity (a
        re-registration brings a new WorkerInfo, so new labels are seen).

        NOTE: LABEL_KEYS lists the levels nearest first, in Tier order (a test pins that
        this equals tier_between). This runs for every pair a decision scores, so the
        cache hit is inlined, and labels are interned (None when unknown): comparing two
        places compares pointers and reads no string of the ~1,000 workers' labels."""
        places = self._places
        entry = places.get(a.worker_id)
        pa = entry[1] if entry is not None and entry[0] is a else self._place(a)
        entry = places.get(b.worker_id)
        pb = entry[1] if entry is not None and entry[0] is b else self._place(b)
        for tier, (x, y) in enumerate(zip(pa, pb, strict=True)):
            if x is y and x is not None:
                return tier
        return Tier.ELSEWHERE

    def _place(self, info: WorkerInfo) -> tuple[str | None, ...]:
        labels = info.labels
        place = tuple(sys.intern(labels[key]) if labels.get(key) else None for key in LABEL_KEYS)
        self._places[info.worker_id] = (info, place)
        return place

    def transfer_s(self, src: WorkerRecord, dst: WorkerRecord, nbytes: int) -> float:
        if nbytes <= 0:
            return 0.0
        # NOTE: bytes_per_s inlined (one call per scored pair on the decision's path)
        a, b = src.info, dst.info
        if self._cache:
            measured = self._cache.get((a.worker_id, b.worker_id))
            if measured is not None:
                return nbytes / measured
        return nbytes / (self._tier_bps[self._tier_of(a, b)] * self.calibration)

    def forget(self, keep: Iterable[WorkerId]) -> int:
        """Drop pairs with a worker not in `keep` (gone from the cluster); returns how many."""
        alive = set(keep)
        gone = [k for k in self._pairs if k[0] not in alive or k[1] not in alive]
        for key in gone:
            del self._pairs[key]
            self._cache.pop(key, None)
        for wid in [w for w in self._places if w not in alive]:
            del self._places[wid]
        return len(gone)

    def pairs(self) -> dict[tuple[WorkerId, WorkerId], PairBandwidth]:
        """Measured pairs (a copy), for status and tests."""
        return {k: PairBandwidth(v.bytes_per_s, v.samples) for k, v in self._pairs.items()}
