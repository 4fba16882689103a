"""Traces the simulator replays: Mooncake JSONL and Azure CSV, arrivals and rates."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

from kvferry.sim.runner import load_requests
from kvferry.sim.trace import (
    TraceRow,
    native_rate,
    parse_azure,
    parse_mooncake,
    read_trace,
    spread_arrivals,
    to_requests,
)

TRACES = Path(__file__).resolve().parents[3] / "shared/data/traces"
MOONCAKE = TRACES / "mooncake_fast25/conversation_trace.jsonl"
AZURE = TRACES / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"


def _mooncake(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mooncake_rows_and_full_block_hashes(tmp_path: Path) -> None:
    path = _mooncake(
        tmp_path / "t.jsonl",
        [
            {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [7, 8, 9]},
            {"timestamp": 3000, "input_length": 1024, "output_length": 0, "hash_ids": [7, 4]},
            {"timestamp": 3000, "input_length": 100, "output_length": 2, "hash_ids": [11]},
        ],
    )
    rows = read_trace(path, limit=10)
    assert rows[0] == TraceRow(0.0, 1100, 5, (7, 8, 9))
    assert rows[1].arrival_s == 3.0
    reqs = to_requests(rows, time_scale=2.0, spread_s=3.0)
    # Only full 512-token blocks are hashed; a partial last block is not.
    assert [r.block_hashes for r in reqs] == [(7, 8), (7, 4), ()]
    # At least one output token (the prompt's pass makes it).
    assert [r.output_tokens for r in reqs] == [5, 1, 2]
    # The two rows at 3 s share the last bucket, spread over 3 s; then halved.
    assert [r.arrival_s for r in reqs] == [0.0, 1.5, 2.25]
    assert read_trace(path, limit=1, start=2)[0].input_tokens == 100


def test_azure_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:47.1805900,396,109\n"
    )
    rows = read_trace(path, limit=10)
    assert [(r.input_tokens, r.output_tokens, r.hash_ids) for r in rows] == [
        (374, 44, ()),
        (396, 109, ()),
    ]
    assert rows[1].arrival_s - rows[0].arrival_s == pytest.approx(0.5)
    reqs = to_requests(rows, time_scale=1.0, spread_s=3.0)
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.5])
    assert all(r.block_hashes == () for r in reqs)  # no prefix information: no sharing


def test_the_real_traces_parse() -> None:
    with MOONCAKE.open() as f:
        lines = list(islice(f, 5))
    rows = parse_mooncake(lines, limit=5)
    assert rows[0] == TraceRow(0.0, 6758, 500, tuple(range(14)))
    assert all(len(r.hash_ids) == -(-r.input_tokens // 512) for r in rows)
    with AZURE.open() as f:
        azure = parse_azure(list(islice(f, 4)), limit=3)
    assert (azure[0].input_tokens, azure[0].output_tokens) == (374, 44)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"timestamp": 0, "input_length": 10}\n', "line 1: not a Mooncake"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 1}\n', "input >= 1"),
        ("a,b\n1,2\n", "header lacks"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", "line 2"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_trace(path, limit=10)


def test_missing_or_empty_trace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found; pass --trace"):
        read_trace(tmp_path / "nope.jsonl", limit=1)
    _mooncake(tmp_path / "one.jsonl", [{"timestamp": 0, "input_length": 1, "output_length": 1}])
    with pytest.raises(ValueError, match="no rows"):
        read_trace(tmp_path / "one.jsonl", limit=1, start=5)


def test_spread_arrivals() -> None:
    assert spread_arrivals([0, 0, 0, 3, 10, 10], 3.0) == [0, 1, 2, 3, 10, 11.5]
    assert spread_arrivals([0, 0, 1], 3.0) == [0, 0.5, 1]  # capped by the next timestamp
    with pytest.raises(ValueError, match="sorted"):
        spread_arrivals([2, 1], 3.0)


def test_rate_picks_the_time_scale(tmp_path: Path) -> None:
    rows = [{"timestamp": 1000 * i, "input_length": 600, "output_length": 3} for i in range(11)]
    path = _mooncake(tmp_path / "t.jsonl", rows)
    assert native_rate(read_trace(path, limit=11), spread_s=0.0) == pytest.approx(1.0)
    reqs, scale = load_requests(str(path), 11, rate=4.0, spread_s=0.0)
    assert scale == pytest.approx(4.0)
    assert reqs[-1].arrival_s == pytest.approx(2.5)
    reqs, scale = load_requests(str(path), 11, time_scale=2.0, spread_s=0.0)
    assert scale == 2.0 and reqs[-1].arrival_s == pytest.approx(5.0)
    with pytest.raises(ValueError, match="--limit"):
        load_requests(str(path), 0)
    with pytest.raises(ValueError, match="spans no time"):
        load_requests(str(path), 1, rate=2.0)
