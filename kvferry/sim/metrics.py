"""What a run measured: one record per request, and the per-policy summary `kvferry sim`
prints (goodput, SLO attainment, TTFT/TPOT percentiles, prefix hit rate, KV bytes by tier).

Definitions (docs/simulator.md):
- TTFT = first token - arrival; TPOT = (last token - first token) / (output tokens - 1),
  for requests with at least 2 output tokens.
- A request meets the SLOs when TTFT <= the TTFT objective and (if it has a TPOT) TPOT <=
  the TPOT objective. Attainment = met / requests.
- Goodput = met / run duration, the duration running from the first arrival to the last
  token, so a cluster that falls behind its arrivals loses goodput twice (fewer requests
  meet the SLOs, over a longer run).
- Prefix hit rate = prompt tokens reused from the computing worker's prefix cache / all
  prompt tokens.
- Percentiles interpolate linearly between order statistics (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kvferry.topology import Tier

if TYPE_CHECKING:
    from .workers import Job

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    index: int
    arrival_s: float
    first_token_s: float
    finished_s: float
    input_tokens: int
    output_tokens: int
    hit_tokens: int
    hit_blocks: int
    predicted_hit_blocks: int
    decode_worker: str
    prefill_worker: str | None  # None: ran whole on its decode worker
    tier: Tier | None
    kv_bytes: int
    rejections: int
    backlog_s: float

    @classmethod
    def from_job(cls, job: Job) -> RequestRecord:
        if job.first_token_at is None or job.finished_at is None:
            raise ValueError(f"request {job.rid} has not finished")
        return cls(
            index=job.rid,
            arrival_s=job.req.arrival_s,
            first_token_s=job.first_token_at,
            finished_s=job.finished_at,
            input_tokens=job.req.input_tokens,
            output_tokens=job.req.output_tokens,
            hit_tokens=job.hit_tokens,
            hit_blocks=job.hit_blocks,
            predicted_hit_blocks=job.predicted_hit_blocks,
            decode_worker=job.decode.id if job.decode is not None else "",
            prefill_worker=job.prefill.id if job.prefill is not None else None,
            tier=job.tier,
            kv_bytes=job.kv_bytes,
            rejections=job.rejections,
            backlog_s=job.backlog_s,
        )

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.finished_s - self.first_token_s) / (self.output_tokens - 1)

    def meets(self, ttft_slo_s: float, tpot_slo_s: float) -> bool:
        tpot = self.tpot_s
        return self.ttft_s <= ttft_slo_s and (tpot is None or tpot <= tpot_slo_s)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Summary:
    """One policy's run. Times in ms, rates in requests/s, bytes in bytes."""

    requests: int
    offered_rps: float
    duration_s: float
    goodput_rps: float
    slo_attainment: float
    ttft_ms: Mapping[str, float]
    tpot_ms: Mapping[str, float]
    prefix_hit_rate: float
    kv_bytes_by_tier: Mapping[str, int]
    kv_bytes_cross_nvlink: int
    """Bytes between workers in different NVLink domains (rack, zone, elsewhere tiers)."""
    prefill_hops: int
    """Requests whose prompt ran on a prefill worker (the rest ran whole on decode)."""
    admission_rejections: int
    backlog_p99_s: float
    """99th percentile of time spent waiting for any decode worker to have room."""
    index_overestimated_blocks: int
    """Prefix blocks placement expected that the worker no longer held (stale index)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Sequence[RequestRecord], ttft_slo_ms: float, tpot_slo_ms: float) -> Summary:
    if not records:
        raise ValueError("no requests to summarise")
    ttft = [r.ttft_s * 1000 for r in records]
    tpot = [t * 1000 for r in records if (t := r.tpot_s) is not None]
    met = sum(r.meets(ttft_slo_ms / 1000, tpot_slo_ms / 1000) for r in records)
    start = min(r.arrival_s for r in records)
    end = max(r.finished_s for r in records)
    span = max(r.arrival_s for r in records) - start
    duration = end - start
    by_tier = {tier.label: 0 for tier in Tier}
    for r in records:
        if r.tier is not None:
            by_tier[r.tier.label] += r.kv_bytes
    return Summary(
        requests=len(records),
        offered_rps=(len(records) - 1) / span if span > 0 else math.nan,
        duration_s=duration,
        goodput_rps=met / duration if duration > 0 else math.nan,
        slo_attainment=met / len(records),
        ttft_ms={f"p{q}": percentile(ttft, q) for q in PERCENTILES},
        tpot_ms={f"p{q}": percentile(tpot, q) for q in PERCENTILES},
        prefix_hit_rate=sum(r.hit_tokens for r in records) / sum(r.input_tokens for r in records),
        kv_bytes_by_tier=by_tier,
        kv_bytes_cross_nvlink=sum(
            n for label, n in by_tier.items() if Tier[label.upper()] > Tier.SAME_NVLINK_DOMAIN
        ),
        prefill_hops=sum(r.prefill_worker is not None for r in records),
        admission_rejections=sum(r.rejections for r in records),
        backlog_p99_s=percentile([r.backlog_s for r in records], 99),
        index_overestimated_blocks=sum(
            max(0, r.predicted_hit_blocks - r.hit_blocks) for r in records
        ),
    )
