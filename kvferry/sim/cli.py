"""`kvferry sim`: replay a trace on a simulated cluster under each placement policy and
print what each achieved (a table, or `--json`)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

from kvferry.config_args import add_dataclass_args, dataclass_from_args

from .config import SimConfig

GBYTE = 1e9


def add_sim_parser(sub: Any) -> None:
    """Register `kvferry sim` on the CLI's subparsers."""
    sim = sub.add_parser(
        "sim",
        help="simulate a cluster replaying a trace under each placement policy",
        description="Discrete-event simulation of prefill and decode GPUs (H100 + Llama-3.1-8B"
        " step-time model, KV pushes by topology tier) replaying a Mooncake or Azure trace;"
        " the router's real placement code decides every request. See docs/simulator.md.",
    )
    sim.add_argument("--trace", required=True, help="Mooncake .jsonl or Azure LLM .csv file")
    sim.add_argument(
        "--policy",
        default="all",
        help="a built-in (random, round-robin, least-loaded, cache-aware, kvferry), 'all',"
        " or a placement YAML file (default: all)",
    )
    sim.add_argument("--json", action="store_true", help="one JSON object keyed by policy")
    sim.add_argument("--limit", type=int, default=0, help="replay the first K rows (0: all)")
    sim.add_argument("--start", type=int, default=0, help="skip this many rows first")
    sim.add_argument(
        "--time-scale", type=float, default=1.0, help="divide inter-arrival gaps by this"
    )
    sim.add_argument(
        "--rate", type=float, default=0.0, help="mean requests/s (overrides --time-scale)"
    )
    sim.add_argument(
        "--spread-s",
        type=float,
        default=3.0,
        help="spread requests sharing a timestamp over up to this many seconds (the Mooncake"
        " conversation trace is quantised to 3 s)",
    )
    sim.add_argument(
        "--calibration", default="", help='JSON {"gpu": {...}, "links": {...}} overrides'
    )
    add_dataclass_args(sim, SimConfig)
    sim.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .hardware import load_calibration
    from .runner import load_requests, policy_names, simulate

    config = dataclass_from_args(SimConfig, args)
    names = policy_names(args.policy)
    if args.spread_s < 0:
        raise ValueError(f"--spread-s must be >= 0, got {args.spread_s}")
    if args.limit < 0 or args.start < 0:
        raise ValueError("--limit and --start must be >= 0 (--limit 0: every row)")
    calibration = load_calibration(args.calibration)
    limit = args.limit or 1 << 62
    requests, scale = load_requests(
        args.trace,
        limit,
        start=args.start,
        time_scale=args.time_scale,
        rate=args.rate,
        spread_s=args.spread_s,
    )
    runs = [simulate(requests, config, calibration, name) for name in names]
    if args.json:
        print(json.dumps({r.policy: _jsonable(r.summary.to_dict()) for r in runs}, indent=2))
        return 0
    print(
        f"trace {args.trace}: {len(requests)} requests, time scale {scale:.3g}"
        f" ({runs[0].summary.offered_rps:.2f} req/s offered)"
    )
    print(
        f"cluster: {config.prefill} prefill + {config.decode} decode GPUs, {config.layout},"
        f" {config.gpus_per_node}/node, {config.nodes_per_nvlink_domain} node(s)/NVLink"
        f" domain, {config.nodes_per_rack} nodes/rack, {config.racks_per_zone} racks/zone;"
        f" SLOs TTFT {config.ttft_slo_ms:g} ms, TPOT {config.tpot_slo_ms:g} ms"
    )
    print(format_table([(r.policy, r.summary.to_dict()) for r in runs]))
    return 0


def format_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Markdown table of summaries (also used by benchmarks/bench_sim.py)."""
    tiers = list(rows[0][1]["kv_bytes_by_tier"]) if rows else []
    head = [
        "policy",
        "goodput req/s",
        "SLO attain",
        "TTFT p50/p90/p99 ms",
        "TPOT p50/p90/p99 ms",
        "prefix hit",
        *(f"KV GB {t}" for t in tiers),
        "KV GB cross-NVLink",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows:
        cells = [
            name,
            f"{s['goodput_rps']:.2f}",
            f"{s['slo_attainment']:.1%}",
            "/".join(_ms(v) for v in s["ttft_ms"].values()),
            "/".join(_ms(v, 1) for v in s["tpot_ms"].values()),
            f"{s['prefix_hit_rate']:.1%}",
            *(f"{s['kv_bytes_by_tier'][t] / GBYTE:.0f}" for t in tiers),
            f"{s['kv_bytes_cross_nvlink'] / GBYTE:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _jsonable(value: Any) -> Any:
    """NaN (no samples) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
