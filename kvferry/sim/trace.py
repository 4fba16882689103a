"""Traces the simulator replays: Mooncake JSONL (with prefix-block hashes) and Azure LLM
2023 CSV (lengths only), turned into arrival-ordered `SimRequest`s.

Mooncake `hash_ids` name 512-token prefix blocks (equal id at position i: identical prefix
of (i + 1) * 512 tokens); only the prompt's FULL blocks are hashed, as the engine hashes
only full blocks. Azure rows carry no prefix information, so they share nothing.

Arrivals: timestamps relative to the first row; runs of equal timestamps (the Mooncake
conversation trace is quantised to ~3 s) are spread evenly over the gap to the next one
(at most `spread_s`), then every time is divided by the time scale. `--rate R` picks the
time scale that makes the mean rate R.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

TRACE_BLOCK_TOKENS = 512
"""Tokens per Mooncake hash id; the simulator's prefix-cache block size."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request as the trace gives it."""

    arrival_s: float  # seconds since the trace's start (or the epoch, for Azure)
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request to simulate."""

    index: int
    arrival_s: float  # seconds after the replay starts
    input_tokens: int
    output_tokens: int  # >= 1: the first token comes from the prompt's pass
    block_hashes: tuple[int, ...]  # hashes of the prompt's full 512-token blocks


def parse_mooncake(lines: Iterable[str], limit: int, start: int = 0) -> list[TraceRow]:
    """Rows `start .. start + limit` of a Mooncake JSONL trace (timestamps in ms)."""
    rows = []
    numbered = ((n, x) for n, x in enumerate(lines, 1) if x.strip())
    for n, line in islice(numbered, start, start + limit):
        try:
            rec = json.loads(line)
            row = TraceRow(
                arrival_s=float(rec["timestamp"]) / 1000.0,
                input_tokens=int(rec["input_length"]),
                output_tokens=int(rec["output_length"]),
                hash_ids=tuple(int(h) for h in rec.get("hash_ids", ())),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"line {n}: not a Mooncake trace row ({err!r}); expected JSON with"
                " timestamp, input_length, output_length and hash_ids"
            ) from None
        rows.append(_checked(row, f"line {n}"))
    return rows


def parse_azure(lines: Iterable[str], limit: int, start: int = 0) -> list[TraceRow]:
    """Rows `start .. start + limit` of an Azure LLM 2023 CSV (header row first)."""
    reader = csv.DictReader(lines)
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(
            f"not an Azure LLM trace: header lacks {sorted(missing)}; expected"
            " TIMESTAMP,ContextTokens,GeneratedTokens"
        )
    rows = []
    for n, rec in enumerate(islice(reader, start, start + limit), start + 2):
        try:
            row = TraceRow(
                arrival_s=_azure_time(rec["TIMESTAMP"]),
                input_tokens=int(rec["ContextTokens"]),
                output_tokens=int(rec["GeneratedTokens"]),
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"line {n}: not an Azure trace row ({err})") from None
        rows.append(_checked(row, f"line {n}"))
    return rows


def _checked(row: TraceRow, where: str) -> TraceRow:
    if row.input_tokens < 1 or row.output_tokens < 0 or row.arrival_s < 0:
        raise ValueError(
            f"{where}: need input >= 1 token, output >= 0 tokens and a timestamp >= 0,"
            f" got {row.input_tokens}, {row.output_tokens}, {row.arrival_s}"
        )
    return row


def _azure_time(stamp: str) -> float:
    """'2023-11-16 18:17:03.9799600' (7 fraction digits) as seconds since the epoch, read
    as UTC (the trace states no zone; only differences are used)."""
    whole, _, frac = stamp.strip().partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


def read_trace(path: str | Path, limit: int, start: int = 0) -> list[TraceRow]:
    """Rows of a trace file, its format told by its first line (JSON object: Mooncake;
    else an Azure CSV header)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(
            f"trace file {str(path)!r} not found; pass --trace PATH to a Mooncake .jsonl or"
            " an Azure LLM .csv (e.g. ../shared/data/traces/mooncake_fast25/"
            "conversation_trace.jsonl)"
        )
    with file.open(encoding="utf-8") as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            rows = parse_mooncake(f, limit, start)
        else:
            rows = parse_azure(f, limit, start)
    if not rows:
        raise ValueError(f"trace file {str(path)!r} has no rows in the asked-for range")
    return rows


def spread_arrivals(arrivals: Sequence[float], spread_s: float) -> list[float]:
    """Spread each run of equal timestamps evenly over [t, t + min(spread_s, next - t)).

    The last run (no next timestamp) uses `spread_s`. Input must be sorted.
    """
    out: list[float] = []
    i = 0
    while i < len(arrivals):
        t = arrivals[i]
        j = i
        while j < len(arrivals) and arrivals[j] == t:
            j += 1
        if j < len(arrivals) and arrivals[j] < t:
            raise ValueError(f"arrivals must be sorted: {arrivals[j]} after {t}")
        window = min(spread_s, arrivals[j] - t) if j < len(arrivals) else spread_s
        count = j - i
        out.extend(t + window * k / count for k in range(count))
        i = j
    return out


def native_rate(rows: Sequence[TraceRow], spread_s: float) -> float:
    """Mean requests/s of `rows` at time scale 1 (after spreading)."""
    rows = sorted(rows, key=lambda r: r.arrival_s)
    arrivals = spread_arrivals([r.arrival_s - rows[0].arrival_s for r in rows], spread_s)
    span = arrivals[-1] - arrivals[0]
    if span <= 0:
        raise ValueError("the trace slice spans no time; use more rows (--limit) to set a rate")
    return (len(rows) - 1) / span


def to_requests(rows: Sequence[TraceRow], time_scale: float, spread_s: float) -> list[SimRequest]:
    """The replay: arrivals from 0 divided by `time_scale`, full-block hashes only, and at
    least one output token (the first token comes with the prompt's pass)."""
    if not time_scale > 0:
        raise ValueError(f"time scale must be > 0, got {time_scale}")
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: r.arrival_s)  # stable: equal times keep file order
    base = rows[0].arrival_s
    arrivals = spread_arrivals([r.arrival_s - base for r in rows], spread_s)
    return [
        SimRequest(
            index=i,
            arrival_s=t / time_scale,
            input_tokens=row.input_tokens,
            output_tokens=max(1, row.output_tokens),
            block_hashes=row.hash_ids[: row.input_tokens // TRACE_BLOCK_TOKENS],
        )
        for i, (row, t) in enumerate(zip(rows, arrivals, strict=True))
    ]
