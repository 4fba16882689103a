"""The trace replay's pure parts (`benchmarks/_trace.py`): parsing, scaling, prompts that
share prefixes as the trace's hash ids do, and the latency summary."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared/data/traces"
MOONCAKE = TRACES / "mooncake_fast25/conversation_trace.jsonl"
AZURE = TRACES / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"


def _load_trace_module() -> ModuleType:
    # NOTE: benchmarks/ is a folder of scripts, not a package; load the module by path.
    name = "kvferry_bench_trace"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks/_trace.py")
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/_trace.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


T = _load_trace_module()
ct = T.content_tokens


# -- parsing ---------------------------------------------------------------------------


MOONCAKE_LINES = [
    '{"timestamp": 0, "input_length": 1000, "output_length": 50, "hash_ids": [0, 1]}\n',
    "\n",
    '{"timestamp": 0, "input_length": 600, "output_length": 7, "hash_ids": [0, 2]}\n',
    '{"timestamp": 3000, "input_length": 30, "output_length": 1, "hash_ids": [3]}\n',
]


def test_parse_mooncake_reads_ms_and_hash_ids_and_skips_blank_lines() -> None:
    rows = T.parse_mooncake(MOONCAKE_LINES, limit=10)
    assert rows == [
        T.TraceRow(0.0, 1000, 50, (0, 1)),
        T.TraceRow(0.0, 600, 7, (0, 2)),
        T.TraceRow(3.0, 30, 1, (3,)),
    ]


def test_parse_mooncake_start_and_limit() -> None:
    rows = T.parse_mooncake(MOONCAKE_LINES, limit=1, start=1)
    assert rows == [T.TraceRow(0.0, 600, 7, (0, 2))]


def test_parse_azure_keeps_seven_fraction_digits() -> None:
    lines = [
        "TIMESTAMP,ContextTokens,GeneratedTokens\n",
        "2023-11-16 18:15:46.6805900,374,44\n",
        "2023-11-16 18:15:50.9951690,396,109\n",
        "2023-11-16 18:16:00,10,1\n",
    ]
    a, b, c = T.parse_azure(lines, limit=5)
    assert (a.input_tokens, a.output_tokens, a.hash_ids) == (374, 44, ())
    assert (b.input_tokens, b.output_tokens) == (396, 109)
    assert b.arrival_s - a.arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert c.arrival_s - a.arrival_s == pytest.approx(13.31941, abs=1e-6)
    assert T.parse_azure(lines, limit=1, start=2) == [c]


# -- scaling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(6758, 211), (1010, 32), (100, 16), (100_000, 600), (512, 16), (544, 17)],
)
def test_scale_length_divides_rounds_and_clips(n: int, expected: int) -> None:
    assert T.scale_length(n, 32, 16, 600) == expected


def test_spread_arrivals_spreads_equal_stamps_over_the_gap() -> None:
    assert T.spread_arrivals([0, 0, 0, 3, 3, 9], 3.0) == [0, 1, 2, 3, 4.5, 9]
    # The gap to the next stamp caps the window; the last run uses the whole window.
    assert T.spread_arrivals([0, 0, 1, 5, 5, 5, 5], 3.0) == [0, 0.5, 1, 5, 5.75, 6.5, 7.25]
    assert T.spread_arrivals([2, 2], 0.0) == [2, 2]
    assert T.spread_arrivals([], 3.0) == []


def test_spread_arrivals_rejects_unsorted_input() -> None:
    with pytest.raises(ValueError, match="sorted"):
        T.spread_arrivals([0, 3, 1], 3.0)


def test_scaling_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        T.Scaling(time_scale=0)
    with pytest.raises(ValueError, match="min_input"):
        T.Scaling(min_input=700, max_input=600)
    with pytest.raises(ValueError, match="min_output"):
        T.Scaling(min_output=0)
    assert T.Scaling(input_scale=32).block_tokens == 16
    assert T.Scaling(input_scale=4).block_tokens == 128


# -- prompts ---------------------------------------------------------------------------


def test_content_tokens_are_a_fixed_function_of_the_key() -> None:
    # Golden value: a different derivation would silently change every benchmark prompt.
    assert ct("0:block:0", 4) == (152, 198, 89, 199)
    assert ct("0:block:0", 6)[:4] == (152, 198, 89, 199)
    assert ct("1:block:0", 4) != ct("0:block:0", 4)
    assert all(0 <= t <= 255 for t in ct("x", 1000))


def test_prompts_sharing_hash_ids_share_exactly_that_prefix() -> None:
    a = T.build_prompt(T.TraceRow(0, 0, 0, (0, 1, 2)), 13, 4, index=0, seed=0)
    b = T.build_prompt(T.TraceRow(0, 0, 0, (0, 1, 5)), 13, 4, index=1, seed=0)
    assert a == [256, *ct("0:block:0", 4), *ct("0:block:1", 4), *ct("0:block:2", 4)]
    assert b == [256, *ct("0:block:0", 4), *ct("0:block:1", 4), *ct("0:block:5", 4)]
    assert a[:9] == b[:9] and a[9:] != b[9:]


def test_prompt_is_truncated_or_padded_with_per_request_tokens() -> None:
    row = T.TraceRow(0, 0, 0, (0, 1, 2))
    assert T.build_prompt(row, 7, 4, index=0, seed=0) == [
        256,
        *ct("0:block:0", 4),
        *ct("0:block:1", 2),
    ]
    short = T.TraceRow(0, 0, 0, (7,))
    assert T.build_prompt(short, 10, 4, index=3, seed=0) == [
        256,
        *ct("0:block:7", 4),
        *ct("0:request:3", 5),
    ]
    azure = T.TraceRow(0, 0, 0)
    assert T.build_prompt(azure, 5, 4, index=2, seed=9) == [256, *ct("9:request:2", 4)]


def test_build_requests_scales_lengths_and_times() -> None:
    rows = [
        T.TraceRow(10.0, 6758, 490, (0, *range(1, 14))),
        T.TraceRow(10.0, 100, 3, (0,)),
        T.TraceRow(13.0, 100_000, 2000, (0, *range(1000, 1195))),
    ]
    scaling = T.Scaling(input_scale=32, output_scale=8, time_scale=2.0, spread_s=3.0)
    reqs = T.build_requests(rows, scaling, seed=0)
    assert [len(r.prompt) for r in reqs] == [211, 16, 600]
    assert [r.max_tokens for r in reqs] == [61, 4, 64]
    assert [r.arrival_s for r in reqs] == [0.0, 0.75, 1.5]
    assert [r.index for r in reqs] == [0, 1, 2]
    # Hash id 0 is 16 tokens: all three share BOS + those (request 1 is cut to 15 of them).
    block0 = (256, *ct("0:block:0", 16))
    assert reqs[0].prompt[:17] == block0 == reqs[2].prompt[:17]
    assert reqs[1].prompt == block0[:16]
    assert reqs[0].prompt[17:33] == ct("0:block:1", 16)
    assert reqs[2].prompt[17:33] == ct("0:block:1000", 16)
    # A prefix cache of 16-token blocks could serve block 0 of requests 1 and 2.
    assert T.reusable_prefix_tokens([r.prompt for r in reqs], 16) == 32
    assert T.build_requests([], scaling, seed=0) == []


def test_reusable_prefix_tokens_counts_full_blocks_of_seen_prefixes() -> None:
    prompts = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 9, 9], [1, 2, 7, 7], [8, 8], [1, 2, 3, 4, 9, 9]]
    assert T.reusable_prefix_tokens(prompts, 2) == 0 + 4 + 2 + 0 + 6
    assert T.reusable_prefix_tokens(prompts, 4) == 0 + 4 + 0 + 0 + 4


# -- summary ---------------------------------------------------------------------------


def test_percentile_interpolates_linearly() -> None:
    assert T.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert T.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert T.percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert T.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert T.percentile([5.0], 90) == 5.0
    assert math.isnan(T.percentile([], 50))
    with pytest.raises(ValueError):
        T.percentile([1.0], 101)


def _results() -> list[object]:
    R = T.RequestResult
    return [
        R(0, 0.0, 0.1, 0.4, [1, 2, 3, 4], cached_tokens=16, kv_transfer_s=0.05),
        R(1, 1.0, 1.3, 1.3, [5]),
        R(2, 2.0, 2.2, 3.0, [1, 2, 3], kv_transfer_s=0.15),  # asked for 5
        R(3, 2.5, error="Generate: UNAVAILABLE: no worker"),
    ]


def test_summarize_computes_latencies_rates_and_errors() -> None:
    s = T.summarize(_results(), [4, 1, 5, 2])
    assert (s.requests, s.completed, s.errors, s.wrong_length) == (4, 3, 1, 1)
    assert s.ttft_p50 == pytest.approx(0.2)  # of 0.1, 0.3, 0.2
    assert s.ttft_p90 == pytest.approx(0.28)
    assert s.tpot_p50 == pytest.approx(0.25)  # of 0.3/3 and 0.8/2; one token: none
    assert s.tpot_p90 == pytest.approx(0.37)
    assert s.e2e_p50 == pytest.approx(0.4)
    assert s.e2e_p90 == pytest.approx(0.88)
    assert s.kv_transfer_p50 == pytest.approx(0.1)
    assert (s.output_tokens, s.cached_tokens) == (8, 16)
    assert s.duration_s == pytest.approx(3.0)
    assert s.output_tok_s == pytest.approx(8 / 3)
    assert s.req_s == pytest.approx(1.0)


def test_summarize_with_nothing_completed_is_all_errors() -> None:
    s = T.summarize([T.RequestResult(0, error="x")], [4])
    assert (s.completed, s.errors, s.output_tok_s, s.duration_s) == (0, 1, 0.0, 0.0)
    assert math.isnan(s.ttft_p50) and math.isnan(s.kv_transfer_p50)


def test_combine_sums_counts_and_takes_medians() -> None:
    a = T.summarize(_results(), [4, 1, 5, 2])
    b = T.summarize(_results()[:2], [4, 1])
    c = T.summarize(_results()[1:2], [4, 1])  # no KV moved: NaN kv_transfer, left out
    s = T.combine([a, b, c])
    assert (s.requests, s.completed, s.errors, s.wrong_length) == (7, 6, 1, 1)
    assert s.output_tokens == 8 + 5 + 1
    assert s.ttft_p50 == pytest.approx(0.2)  # median of 0.2, 0.2 (0.1, 0.3), 0.3
    assert s.kv_transfer_p50 == pytest.approx(0.075)  # median of 0.1 and 0.05
    assert s.output_tok_s == a.output_tok_s  # median of 8/3, 5/1.3, 1/1.3
    with pytest.raises(ValueError):
        T.combine([])


def test_count_mismatches_compares_requests_completed_in_both() -> None:
    R = T.RequestResult
    a = [R(0, token_ids=[1, 2]), R(1, token_ids=[3]), R(2, token_ids=[4]), R(3, error="x")]
    b = [R(0, token_ids=[1, 2]), R(1, token_ids=[9]), R(2, error="y"), R(3, token_ids=[5])]
    assert T.count_mismatches(a, b) == (2, 1)


# -- the real traces -------------------------------------------------------------------


@pytest.mark.skipif(not MOONCAKE.exists(), reason="shared traces not present")
def test_real_mooncake_trace_parses_and_scales() -> None:
    with MOONCAKE.open(encoding="utf-8") as f:
        rows = T.parse_mooncake(f, limit=64)
    assert len(rows) == 64
    assert rows[0] == T.TraceRow(0.0, 6758, 500, tuple(range(14)))
    assert rows[10].arrival_s == 3.0
    assert all(len(r.hash_ids) == math.ceil(r.input_tokens / 512) for r in rows)
    reqs = T.build_requests(rows, T.Scaling(input_scale=32, output_scale=8, time_scale=4.0), 0)
    assert len(reqs[0].prompt) == 211 and reqs[0].max_tokens == 62
    assert all(r.prompt[0] == 256 and all(0 <= t <= 255 for t in r.prompt[1:]) for r in reqs)
    assert all(16 <= len(r.prompt) <= 600 and 4 <= r.max_tokens <= 64 for r in reqs)
    # Every conversation starts with hash id 0, so every prompt shares its first 17 tokens.
    assert len({r.prompt[:17] for r in reqs}) == 1
    # The last 3-s bucket (18 s) holds 3 requests: 18 + 2 s, compressed 4x.
    assert reqs[-1].arrival_s == pytest.approx(5.0)
    assert T.reusable_prefix_tokens([r.prompt for r in reqs], 16) == 63 * 16


@pytest.mark.skipif(not AZURE.exists(), reason="shared traces not present")
def test_real_azure_trace_parses() -> None:
    with AZURE.open(encoding="utf-8") as f:
        rows = T.parse_azure(f, limit=64)
    assert len(rows) == 64
    assert (rows[0].input_tokens, rows[0].output_tokens) == (374, 44)
    assert rows[1].arrival_s - rows[0].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(rows))
