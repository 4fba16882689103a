"""The trace replay's pure parts (imported by `bench_e2e_trace.py`): parse a Mooncake or
Azure trace, scale it to the tiny model, build token-id prompts, and summarise results.

Scaling (each step is a `Scaling` field, printed by the script):

- lengths: `clip(round(n / scale), lo, hi)`, for prompts (BOS included) and outputs;
- arrivals: requests that share a quantised timestamp are spread evenly over the gap to the
  next timestamp (at most `spread_s`), then every gap is divided by `time_scale`;
- prompts: `[BOS, content...]`. Mooncake `hash_ids` name 512-token blocks; each id becomes
  `round(512 / input_scale)` token ids drawn from SHAKE-128 of (seed, id), so requests that
  share a hash-id prefix share a token prefix. Azure rows (no hash ids), and any tail past
  the hash blocks, get content unique to the request.

No I/O here except reading the lines the loaders are given; no clock.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from kvferry.sim.metrics import percentile
from kvferry.sim.trace import spread_arrivals

BOS_ID = 256  # the byte tokenizer's BOS; content token ids stay in [0, 255]
TRACE_BLOCK_TOKENS = 512  # Mooncake's hash_ids block size


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request as the trace gives it."""

    arrival_s: float  # seconds since the trace's start
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def parse_mooncake(lines: Iterable[str], limit: int, start: int = 0) -> list[TraceRow]:
    """Rows `start .. start + limit` of a Mooncake JSONL trace (timestamps in ms)."""
    rows = []
    for line in islice((x for x in lines if x.strip()), start, start + limit):
        rec = json.loads(line)
        rows.append(
            TraceRow(
                arrival_s=rec["timestamp"] / 1000.0,
                input_tokens=int(rec["input_length"]),
                output_tokens=int(rec["output_length"]),
                hash_ids=tuple(int(h) for h in rec.get("hash_ids", ())),
            )
        )
    return rows


def parse_azure(lines: Iterable[str], limit: int, start: int = 0) -> list[TraceRow]:
    """Rows `start .. start + limit` of an Azure LLM 2023 CSV (header row first)."""
    rows = []
    for rec in islice(csv.DictReader(lines), start, start + limit):
        rows.append(
            TraceRow(
                arrival_s=_azure_time(rec["TIMESTAMP"]),
                input_tokens=int(rec["ContextTokens"]),
                output_tokens=int(rec["GeneratedTokens"]),
            )
        )
    return rows


def _azure_time(stamp: str) -> float:
    """'2023-11-16 18:17:03.9799600' (7 fraction digits) as seconds since the epoch, read
    as UTC (the trace states no zone; only differences are used)."""
    whole, _, frac = stamp.strip().partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


@dataclass(frozen=True, slots=True)
class Scaling:
    """How a trace is shrunk to fit the tiny model on a small CPU."""

    input_scale: float = 32.0
    min_input: int = 16
    max_input: int = 600
    output_scale: float = 8.0
    min_output: int = 4
    max_output: int = 64
    time_scale: float = 1.0
    spread_s: float = 3.0

    def __post_init__(self) -> None:
        for name in ("input_scale", "output_scale", "time_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 2 <= self.min_input <= self.max_input:
            raise ValueError(
                f"need 2 <= min_input <= max_input (BOS plus content), got"
                f" [{self.min_input}, {self.max_input}]"
            )
        if not 1 <= self.min_output <= self.max_output:
            raise ValueError(
                f"need 1 <= min_output <= max_output, got [{self.min_output}, {self.max_output}]"
            )
        if self.spread_s < 0:
            raise ValueError(f"spread_s must be >= 0 (0 = keep timestamps), got {self.spread_s}")

    @property
    def block_tokens(self) -> int:
        """Token ids per Mooncake hash id after scaling."""
        return max(1, round(TRACE_BLOCK_TOKENS / self.input_scale))


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    index: int
    arrival_s: float  # seconds after the replay starts
    prompt: tuple[int, ...]
    max_tokens: int


def scale_length(n: int, scale: float, lo: int, hi: int) -> int:
    return min(max(round(n / scale), lo), hi)


def content_tokens(key: str, n: int) -> tuple[int, ...]:
    """`n` token ids in [0, 255] derived from `key` alone (same key, same tokens)."""
    return tuple(hashlib.shake_128(key.encode()).digest(n))


def build_prompt(row: TraceRow, length: int, block_tokens: int, index: int, seed: int) -> list[int]:
    """`[BOS]` plus `length - 1` content tokens: one block per hash id, then a per-request
    tail where the hash blocks do not reach `length`."""
    content: list[int] = []
    for hash_id in row.hash_ids:
        if len(content) >= length - 1:
            break
        content += content_tokens(f"{seed}:block:{hash_id}", block_tokens)
    missing = length - 1 - len(content)
    if missing > 0:
        content += content_tokens(f"{seed}:request:{index}", missing)
    return [BOS_ID, *content[: length - 1]]


def build_requests(rows: Sequence[TraceRow], scaling: Scaling, seed: int) -> list[ReplayRequest]:
    """The replay's requests: scaled lengths, prompts, arrivals from 0."""
    if not rows:
        return []
    base = rows[0].arrival_s
    arrivals = spread_arrivals([r.arrival_s - base for r in rows], scaling.spread_s)
    requests = []
    for i, (row, arrival) in enumerate(zip(rows, arrivals, strict=True)):
        length = scale_length(
            row.input_tokens, scaling.input_scale, scaling.min_input, scaling.max_input
        )
        requests.append(
            ReplayRequest(
                index=i,
                arrival_s=arrival / scaling.time_scale,
                prompt=tuple(build_prompt(row, length, scaling.block_tokens, i, seed)),
                max_tokens=scale_length(
                    row.output_tokens, scaling.output_scale, scaling.min_output, scaling.max_output
                ),
            )
        )
    return requests


def reusable_prefix_tokens(prompts: Sequence[Sequence[int]], block_size: int) -> int:
    """Prompt tokens an infinite prefix cache of `block_size`-token blocks could serve:
    for each prompt, its full blocks whose whole prefix appeared in an earlier prompt."""
    # NOTE: keys are whole prefixes, and every full-block prefix of a prompt is recorded,
    # so a seen key implies all shorter ones were seen: the hits form a prefix.
    seen: set[tuple[int, ...]] = set()
    hits = 0
    for prompt in prompts:
        keys = [tuple(prompt[: b * block_size]) for b in range(1, len(prompt) // block_size + 1)]
        hits += block_size * sum(key in seen for key in keys)
        seen.update(keys)
    return hits


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request; times in seconds after the replay's start."""

    index: int
    sent_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    token_ids: list[int] | None = None
    cached_tokens: int = 0  # prompt tokens served from a prefix cache (router's usage)
    kv_transfer_s: float = 0.0  # router-reported KV transfer time (0: no KV moved)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.token_ids is not None


@dataclass(frozen=True, slots=True)
class Summary:
    """One configuration's run. Latencies in seconds; rates over the whole run (replay
    start to the last token received)."""

    requests: int
    completed: int
    errors: int
    wrong_length: int  # completed with a token count other than max_tokens
    ttft_p50: float
    ttft_p90: float
    tpot_p50: float
    tpot_p90: float
    e2e_p50: float
    e2e_p90: float
    kv_transfer_p50: float  # over requests whose KV moved; NaN if none did
    kv_transfer_p90: float
    output_tokens: int
    cached_tokens: int
    duration_s: float
    output_tok_s: float
    req_s: float


def summarize(results: Sequence[RequestResult], max_tokens: Sequence[int]) -> Summary:
    """Per-request TTFT (sent -> first token), TPOT ((last - first) / (n - 1), requests
    with n >= 2) and end-to-end latency, summarised; throughput counts completed requests."""
    done = [r for r in results if r.ok]
    ttft, tpot, e2e = [], [], []
    for r in done:
        if r.sent_s is None or r.first_token_s is None or r.last_token_s is None:
            continue  # NOTE: a completed request always has all three; narrowing only
        ttft.append(r.first_token_s - r.sent_s)
        e2e.append(r.last_token_s - r.sent_s)
        n = len(r.token_ids or ())
        if n >= 2:
            tpot.append((r.last_token_s - r.first_token_s) / (n - 1))
    moved = [r.kv_transfer_s for r in done if r.kv_transfer_s > 0]
    ends = [r.last_token_s for r in done if r.last_token_s is not None]
    duration = max(ends) if ends else 0.0
    tokens = sum(len(r.token_ids or ()) for r in done)
    return Summary(
        requests=len(results),
        completed=len(done),
        errors=len(results) - len(done),
        wrong_length=sum(len(r.token_ids or ()) != max_tokens[r.index] for r in done),
        ttft_p50=percentile(ttft, 50),
        ttft_p90=percentile(ttft, 90),
        tpot_p50=percentile(tpot, 50),
        tpot_p90=percentile(tpot, 90),
        e2e_p50=percentile(e2e, 50),
        e2e_p90=percentile(e2e, 90),
        kv_transfer_p50=percentile(moved, 50),
        kv_transfer_p90=percentile(moved, 90),
        output_tokens=tokens,
        cached_tokens=sum(r.cached_tokens for r in done),
        duration_s=duration,
        output_tok_s=tokens / duration if duration > 0 else 0.0,
        req_s=len(done) / duration if duration > 0 else 0.0,
    )


_COUNTS = frozenset(
    {"requests", "completed", "errors", "wrong_length", "output_tokens", "cached_tokens"}
)


def combine(summaries: Sequence[Summary]) -> Summary:
    """Several rounds of one configuration as one: counts summed, every other field the
    median over the rounds where it is defined (NaN where it is in none)."""
    if not summaries:
        raise ValueError("combine() needs at least one summary")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Summary):
        values = [getattr(s, f.name) for s in summaries]
        if f.name in _COUNTS:
            fields[f.name] = sum(values)
        else:
            defined = [v for v in values if not math.isnan(v)]
            fields[f.name] = statistics.median(defined) if defined else math.nan
    return Summary(**fields)


def count_mismatches(a: Sequence[RequestResult], b: Sequence[RequestResult]) -> tuple[int, int]:
    """(requests compared, requests whose token ids differ) over those completed in both."""
    compared = differ = 0
    for x, y in zip(a, b, strict=True):
        if x.ok and y.ok:
            compared += 1
            differ += x.token_ids != y.token_ids
    return compared, differ
