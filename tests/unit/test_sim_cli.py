"""`kvferry sim` end to end on a slice of the real trace: the JSON's shape and invariants,
the table, and clear errors (exit 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvferry.cli import main
from kvferry.services.router.placement import BUILTIN

TRACES = Path(__file__).resolve().parents[3] / "shared/data/traces"
MOONCAKE = TRACES / "mooncake_fast25/conversation_trace.jsonl"
AZURE = TRACES / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"


def _sim(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["sim", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_for_every_policy_on_a_mooncake_slice(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _sim(
        capsys,
        "--trace",
        str(MOONCAKE),
        "--limit",
        "120",
        "--time-scale",
        "10",
        "--prefill",
        "6",
        "--decode",
        "2",
        "--policy",
        "all",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert list(result) == list(BUILTIN)
    for summary in result.values():
        assert summary["requests"] == 120  # every request finished, once
        assert 0 <= summary["slo_attainment"] <= 1
        assert 0 <= summary["prefix_hit_rate"] <= 1
        assert summary["goodput_rps"] >= 0
        assert set(summary["kv_bytes_by_tier"]) == {
            "same_node",
            "same_nvlink_domain",
            "same_rack",
            "same_zone",
            "elsewhere",
        }
        assert all(v >= 0 for v in summary["kv_bytes_by_tier"].values())
        assert summary["kv_bytes_cross_nvlink"] <= sum(summary["kv_bytes_by_tier"].values())
        for key in ("ttft_ms", "tpot_ms"):
            p = summary[key]
            assert list(p) == ["p50", "p90", "p99"] and 0 < p["p50"] <= p["p90"] <= p["p99"]
    # Every request shares the trace's first block (512 of ~12k tokens): some reuse.
    assert result["random"]["prefix_hit_rate"] > 0
    assert result["cache-aware"]["prefix_hit_rate"] >= result["random"]["prefix_hit_rate"]


def test_table_for_one_policy_on_azure(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _sim(
        capsys,
        "--trace",
        str(AZURE),
        "--limit",
        "80",
        "--policy",
        "least-loaded",
        "--ttft-slo-ms",
        "500",
        "--tpot-slo-ms",
        "20",
    )
    assert code == 0
    assert "80 requests" in out and "TTFT 500 ms, TPOT 20 ms" in out
    row = next(line for line in out.splitlines() if line.startswith("| least-loaded"))
    assert "| 0.0% |" in row  # Azure rows carry no prefix information: no hits


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "no/such/trace.jsonl"], "not found; pass --trace"),
        (["--trace", str(MOONCAKE), "--policy", "fastest"], "unknown policy 'fastest'"),
        (["--trace", str(MOONCAKE), "--prefill", "0"], "--prefill must be at least 1"),
        (["--trace", str(MOONCAKE), "--limit", "-1"], "--limit"),
        (["--trace", str(MOONCAKE), "--calibration", "no.json"], "calibration file"),
    ],
)
def test_bad_input_exits_2_naming_the_fix(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = _sim(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_the_simulator_imports_neither_torch_nor_the_engine(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, kvferry.sim.runner, kvferry.sim.cli;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('kvferry.services.engine')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()[-500:]
