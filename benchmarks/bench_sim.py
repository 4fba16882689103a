"""Placement policies on a simulated H100 cluster (`kvferry sim`), swept over request rate:
SLO attainment, goodput and KV bytes by tier per policy, a PNG of attainment vs rate, and
the ratios against least-loaded (and cache-aware, for KV crossing NVLink domains) last.

    .venv/bin/python benchmarks/bench_sim.py [--rates 40,50,60,65,70] [--prefill 40]
        [--decode 24] [--ttft-slo-ms 3000] [--bandwidth-feed push|wire|none]
        [--png docs/img/sim_attainment.png] [--json out.json]
    .venv/bin/python benchmarks/bench_sim.py --splits 48:16,44:20,40:24 \
        --policy least-loaded,kvferry --rates 40,80     # capacity per prefill:decode split

Every point replays the same trace (default: the whole Mooncake conversation trace) at
`--rates` requests/s under each policy; the router's real placement code decides. The
capacity of a policy is the highest rate at which it still meets both SLOs for >= 90% of
requests (linear interpolation between sweep points; "<" the lowest rate if it never does,
">=" the highest if it always does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from _report import cpu_name

from kvferry.config_args import add_dataclass_args, dataclass_from_args
from kvferry.sim.cli import format_table
from kvferry.sim.config import SimConfig
from kvferry.sim.hardware import Calibration, load_calibration
from kvferry.sim.runner import load_requests, policy_names, simulate

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared/data/traces/mooncake_fast25/conversation_trace.jsonl"
TARGET = 0.9
BASELINE = "least-loaded"


def capacity(rates: Sequence[float], attainment: Sequence[float]) -> tuple[str, float]:
    """(qualifier, rate): the highest rate with attainment >= TARGET, interpolated
    between the last sweep point meeting it and the next one (rates ascending)."""
    if attainment[0] < TARGET:
        return "<", rates[0]
    for i in range(1, len(rates)):
        if attainment[i] < TARGET:
            a0, a1 = attainment[i - 1], attainment[i]
            return "", rates[i - 1] + (rates[i] - rates[i - 1]) * (a0 - TARGET) / (a0 - a1)
    return ">=", rates[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--rates", default="40,50,55,60,65,70", help="req/s, ascending")
    parser.add_argument("--policy", default="all", help="all, or names separated by commas")
    parser.add_argument("--limit", type=int, default=0, help="first K rows (0: all)")
    parser.add_argument("--calibration", default="")
    parser.add_argument("--png", default=str(REPO / "docs/img/sim_attainment.png"))
    parser.add_argument("--json", default="", help="write every summary here")
    parser.add_argument(
        "--splits",
        default="",
        help="instead of the sweep: capacity by bisection over [first, last rate] for each"
        " prefill:decode split of the same GPUs, e.g. 48:16,44:20,40:24",
    )
    add_dataclass_args(parser, SimConfig)
    parser.set_defaults(prefill=40, decode=24, ttft_slo_ms=3000.0)
    args = parser.parse_args()
    config = dataclass_from_args(SimConfig, args)
    rates = [float(r) for r in args.rates.split(",")]
    if rates != sorted(rates) or rates[0] <= 0:
        parser.error("--rates must be positive and ascending")
    names = [n for spec in args.policy.split(",") for n in policy_names(spec)]
    calibration = load_calibration(args.calibration)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(f"{date.today()} commit {commit} host {cpu_name()}")
    print(f"trace {args.trace}; {config}")
    if args.splits:
        return split_capacities(args, config, names, rates, calibration)

    results: dict[float, dict[str, dict]] = {}
    for rate in rates:
        requests, scale = load_requests(args.trace, args.limit or 1 << 62, rate=rate)
        started = time.perf_counter()
        runs = {n: simulate(requests, config, calibration, n).summary.to_dict() for n in names}
        results[rate] = runs
        print(
            f"\n### {rate:g} req/s (time scale {scale:.3g}, {len(requests)} requests,"
            f" {time.perf_counter() - started:.0f} s to simulate)\n"
        )
        print(format_table(list(runs.items())))

    caps = {n: capacity(rates, [results[r][n]["slo_attainment"] for r in rates]) for n in names}
    print(f"\ncapacity (highest rate with >= {TARGET:.0%} SLO attainment):")
    for n, (q, c) in caps.items():
        print(f"  {n}: {q}{c:.1f} req/s")
    if args.json:
        Path(args.json).write_text(json.dumps({str(r): v for r, v in results.items()}, indent=1))
    if args.png:
        plot(Path(args.trace).name, rates, results, names, config, Path(args.png))
        print(f"plot: {args.png} ({Path(args.png).stat().st_size // 1024} KiB)")

    if BASELINE in names:
        print(f"\nratios vs {BASELINE} (goodput at each rate):")
        for n in names:
            if n == BASELINE:
                continue
            ratios = [
                results[r][n]["goodput_rps"] / results[r][BASELINE]["goodput_rps"] for r in rates
            ]
            print(
                f"  {n}: "
                + ", ".join(f"{r:g}: {x:.2f}x" for r, x in zip(rates, ratios, strict=True))
            )
    if "kvferry" in names and "cache-aware" in names:
        cut = [
            1
            - results[r]["kvferry"]["kv_bytes_cross_nvlink"]
            / max(1, results[r]["cache-aware"]["kv_bytes_cross_nvlink"])
            for r in rates
        ]
        print(
            "kvferry vs cache-aware, KV bytes crossing NVLink domains: "
            + ", ".join(f"{r:g}: {-x:+.0%}" for r, x in zip(rates, cut, strict=True))
        )
    if "kvferry" in names and BASELINE in names:
        (qk, ck), (qb, cb) = caps["kvferry"], caps[BASELINE]
        exact = "" if not (qk or qb) else " (bounded by the sweep)"
        print(f"capacity kvferry / {BASELINE}: {ck:.1f} / {cb:.1f} = {ck / cb:.2f}x{exact}")
    return 0


def split_capacities(
    args: argparse.Namespace,
    config: SimConfig,
    names: Sequence[str],
    rates: Sequence[float],
    calibration: Calibration,
) -> int:
    """Each policy's capacity at each split, by 6 bisection steps (to 1/64 of the range)."""
    best: dict[str, tuple[float, str]] = {}
    for split in args.splits.split(","):
        prefill, decode = (int(x) for x in split.split(":"))
        shaped = dataclasses.replace(config, prefill=prefill, decode=decode)
        caps = {}
        for name in names:
            lo, hi = rates[0], rates[-1]
            for _ in range(6):
                mid = (lo + hi) / 2
                requests, _ = load_requests(args.trace, args.limit or 1 << 62, rate=mid)
                run = simulate(requests, shaped, calibration, name)
                lo, hi = (mid, hi) if run.summary.slo_attainment >= TARGET else (lo, mid)
            caps[name] = lo
            if lo > best.get(name, (0.0, ""))[0]:
                best[name] = (lo, split)
            bound = f"below {rates[0]:g}" if lo == rates[0] else f"{lo:.1f}-{hi:.1f}"
            print(f"{split} {name}: capacity {bound} req/s", flush=True)
        if "kvferry" in caps and BASELINE in caps:
            print(f"{split} kvferry / {BASELINE}: {caps['kvferry'] / caps[BASELINE]:.2f}x")
    if "kvferry" in best and BASELINE in best:
        (ck, sk), (cb, sb) = best["kvferry"], best[BASELINE]
        print(
            f"best split each: kvferry {ck:.1f} ({sk}) / {BASELINE} {cb:.1f} ({sb})"
            f" = {ck / cb:.2f}x"
        )
    return 0


def plot(
    trace: str,
    rates: Sequence[float],
    results: dict[float, dict[str, dict]],
    names: Sequence[str],
    config: SimConfig,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for n in names:
        left.plot(rates, [100 * results[r][n]["slo_attainment"] for r in rates], "o-", label=n)
        right.plot(
            rates, [results[r][n]["kv_bytes_cross_nvlink"] / 1e12 for r in rates], "o-", label=n
        )
    left.axhline(100 * TARGET, color="grey", lw=0.8, ls="--")
    left.set(xlabel="offered rate (req/s)", ylabel="SLO attainment (%)", ylim=(0, 101))
    left.set_title(
        f"TTFT <= {config.ttft_slo_ms:g} ms and TPOT <= {config.tpot_slo_ms:g} ms", fontsize=9
    )
    right.set(xlabel="offered rate (req/s)", ylabel="KV crossing NVLink domains (TB)")
    right.set_ylim(bottom=0)
    right.set_title("KV bytes between NVLink domains", fontsize=9)
    left.legend(fontsize=8)
    fig.suptitle(
        f"{trace}: {config.prefill} prefill + {config.decode} decode simulated H100s,"
        f" Llama-3.1-8B, bandwidth feed '{config.bandwidth_feed}'",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
