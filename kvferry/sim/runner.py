"""Run one trace under one or more placement policies: the entry point `kvferry sim` and
`benchmarks/bench_sim.py` share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvferry.services.router.placement import (
    BUILTIN,
    BandwidthTable,
    PlacementConfig,
    build_policy,
    load_config,
    named_config,
)

from .config import SimConfig
from .hardware import Calibration
from .metrics import RequestRecord, Summary, summarize
from .simulation import Simulation
from .trace import SimRequest, native_rate, read_trace, to_requests

ALL = "all"


def policy_names(spec: str) -> list[str]:
    """`all` (every built-in), a built-in name, or a placement YAML file."""
    if spec == ALL:
        return list(BUILTIN)
    if spec in BUILTIN or spec.endswith((".yaml", ".yml", ".json")):
        return [spec]
    raise ValueError(
        f"unknown policy {spec!r}; use one of {', '.join(BUILTIN)}, 'all', or a placement YAML file"
    )


def placement_config(name: str, seed: int) -> PlacementConfig:
    """A built-in by name, or a YAML file's config, seeded."""
    if name in BUILTIN:
        return named_config(name, seed=seed)
    if not Path(name).is_file():
        raise ValueError(f"placement config file {name!r} not found")
    return load_config(name, seed=seed)


@dataclass(frozen=True, slots=True)
class PolicyRun:
    policy: str
    summary: Summary
    records: list[RequestRecord]
    events: int


def simulate(
    requests: Sequence[SimRequest], config: SimConfig, calibration: Calibration, policy: str
) -> PolicyRun:
    """One run of `requests` with the real placement pipeline `policy` deciding."""
    placement = placement_config(policy, config.seed)
    sim = Simulation(
        config, calibration, build_policy(placement), BandwidthTable(placement.transfer)
    )
    records = sim.run(requests)
    records.sort(key=lambda r: r.index)
    summary = summarize(records, config.ttft_slo_ms, config.tpot_slo_ms)
    return PolicyRun(policy, summary, records, sim.loop.processed)


def load_requests(
    path: str,
    limit: int,
    *,
    start: int = 0,
    time_scale: float = 1.0,
    rate: float = 0.0,
    spread_s: float = 3.0,
) -> tuple[list[SimRequest], float]:
    """The replay's requests and the time scale used (`rate` > 0 picks it: mean rate)."""
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if rate < 0 or not time_scale > 0:
        raise ValueError("--rate must be >= 0 (0: use --time-scale) and --time-scale > 0")
    rows = read_trace(path, limit, start)
    if rate > 0:
        time_scale = rate / native_rate(rows, spread_s)
    return to_requests(rows, time_scale, spread_s), time_scale
