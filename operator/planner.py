"""The scaling planner: how many replicas each pool should have, from what the router
reports. Pure: state in, decision and new state out; the clock is passed in.

Algorithm (per pool, every `PlannerConfig.interval_s`):

1. **Signal.** The pool's load ratio `r` = observed / target, where target is
   `headroom` × the objective: prefill is sized by TTFT (time to first token grows with the
   prompt queue), decode by TPOT (time per output token grows with the decode batch).
   Where the router also reports load, the queue signal counts too: prefill
   `prompt tokens waiting per replica / target_prefill_tokens`, decode `KV blocks in use /
   total`/ `target_kv_utilization`; `r` is the largest ratio available.
2. **Raw recommendation.** Inside the tolerance band (|r − 1| ≤ `tolerance`) keep the
   current count; otherwise `ceil(current × r)` (a pool at 0 with load gets 1). A window
   with no requests at all recommends `minReplicas`. No signal at all (router unreachable,
   no objectives) keeps the current count: the planner never scales on missing data.
3. **Stabilization (no flapping).** Recommendations are remembered with their time.
   Scaling up takes the *lowest* recommendation of the last `scale_up_window_s` (a single
   spike does not add GPUs); scaling down takes the *highest* of the last
   `scale_down_window_s` (it only shrinks once load stayed low for the whole window).
4. **Rate limits.** Up by at most `max(1, current × (scale_up_factor − 1))` per decision;
   down by at most `scale_down_step` pods and only `scale_down_period_s` after the last
   change, so each removed worker drains (SIGTERM → finish in-flight requests and KV
   pushes) before the next goes.
5. **Bounds.** The result is clamped to [minReplicas, maxReplicas].

A restarted operator starts with empty history: it scales up as usual but cannot scale
down until a full down-window of low load has been seen again (safe by construction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kvferry.operator.crd.spec import Objectives, Role


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    interval_s: float = 15.0
    """How often the operator samples the router and decides."""
    headroom: float = 0.8
    """Aim at 80% of each objective so a burst does not breach it before pods start."""
    tolerance: float = 0.1
    """Ratios within ±10% of the target change nothing (the HPA's default)."""
    scale_up_window_s: float = 30.0
    """Load must stay high this long before pods are added (GPU pods are expensive)."""
    scale_down_window_s: float = 300.0
    """Load must stay low this long before pods are removed (the HPA's default)."""
    scale_up_factor: float = 2.0
    """At most double a pool per decision."""
    scale_down_step: int = 1
    """Remove at most this many pods per decision (each drains first)."""
    scale_down_period_s: float = 60.0
    """Wait this long after any change before removing more (drain time)."""
    target_prefill_tokens: float = 16384.0
    """Prompt tokens waiting per prefill replica that count as fully loaded."""
    target_kv_utilization: float = 0.85
    """Decode KV-cache use that counts as fully loaded."""

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {self.headroom}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.scale_up_factor <= 1:
            raise ValueError(f"scale_up_factor must be > 1, got {self.scale_up_factor}")
        if self.scale_down_step < 1:
            raise ValueError(f"scale_down_step must be >= 1, got {self.scale_down_step}")
        for name in ("interval_s", "target_prefill_tokens", "target_kv_utilization"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class PoolObservation:
    """What the router reported for one pool over the last interval (None: unknown)."""

    requests: int | None = None
    """Requests finished or running in the interval; 0 means idle."""
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    prefill_tokens_waiting: int | None = None
    """Prompt tokens queued across the pool."""
    kv_utilization: float | None = None
    """Fraction of the pool's KV blocks in use, 0..1."""


@dataclass(frozen=True, slots=True)
class PoolBounds:
    current: int
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True, slots=True)
class PoolHistory:
    """Recent recommendations `(time, replicas)`, when planning for the pool began, and
    the time of the last change."""

    recommendations: tuple[tuple[float, int], ...] = ()
    started_s: float | None = None
    last_change_s: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str
    history: PoolHistory = field(default_factory=PoolHistory)


def load_ratio(
    role: Role,
    obs: PoolObservation,
    objectives: Objectives | None,
    current: int,
    cfg: PlannerConfig,
) -> float | None:
    """Observed load over target for the pool; None when nothing was measured."""
    ratios: list[float] = []
    if objectives is not None:
        latency, objective = (
            (obs.ttft_ms, objectives.ttft_ms)
            if role is Role.PREFILL
            else (obs.tpot_ms, objectives.tpot_ms)
        )
        if latency is not None:
            ratios.append(latency / (objective * cfg.headroom))
    if role is Role.PREFILL and obs.prefill_tokens_waiting is not None:
        per_replica = obs.prefill_tokens_waiting / max(current, 1)
        ratios.append(per_replica / cfg.target_prefill_tokens)
    if role is Role.DECODE and obs.kv_utilization is not None:
        ratios.append(obs.kv_utilization / cfg.target_kv_utilization)
    return max(ratios) if ratios else None


def raw_recommendation(
    role: Role,
    obs: PoolObservation,
    objectives: Objectives | None,
    bounds: PoolBounds,
    cfg: PlannerConfig,
) -> tuple[int, str]:
    if obs.requests == 0:
        return bounds.min_replicas, "idle"
    ratio = load_ratio(role, obs, objectives, bounds.current, cfg)
    if ratio is None:
        return bounds.current, "no signal"
    if abs(ratio - 1.0) <= cfg.tolerance:
        return bounds.current, f"within tolerance (load {ratio:.2f})"
    if bounds.current == 0:
        return (1 if ratio > 0 else 0), f"load {ratio:.2f} on an empty pool"
    return math.ceil(bounds.current * ratio - 1e-9), f"load {ratio:.2f}"


def plan(
    role: Role,
    obs: PoolObservation,
    objectives: Objectives | None,
    bounds: PoolBounds,
    history: PoolHistory,
    now_s: float,
    cfg: PlannerConfig,
) -> Decision:
    """One planning step for one pool."""
    raw, why = raw_recommendation(role, obs, objectives, bounds, cfg)
    horizon = now_s - max(cfg.scale_up_window_s, cfg.scale_down_window_s)
    recs = (*tuple((t, r) for t, r in history.recommendations if t >= horizon), (now_s, raw))
    started = now_s if history.started_s is None else history.started_s
    history = replace(history, recommendations=recs, started_s=started)
    current = bounds.current
    up_window = [r for t, r in recs if t >= now_s - cfg.scale_up_window_s]
    down_window = [r for t, r in recs if t >= now_s - cfg.scale_down_window_s]
    target = current
    stable_up = min(up_window)
    stable_down = max(down_window)
    up_covered = now_s - started >= cfg.scale_up_window_s
    down_covered = now_s - started >= cfg.scale_down_window_s
    if stable_up > current and up_covered:
        step = max(1, math.floor(current * (cfg.scale_up_factor - 1)))
        target = min(stable_up, current + step)
        why = f"{why}; up {current}->{target}"
    elif stable_down < current and down_covered:
        since = None if history.last_change_s is None else now_s - history.last_change_s
        if since is not None and since < cfg.scale_down_period_s:
            why = f"{why}; down held ({since:.0f}s since last change)"
        else:
            target = max(stable_down, current - cfg.scale_down_step)
            why = f"{why}; down {current}->{target} (drains first)"
    else:
        why = f"{why}; stabilizing" if raw != current else why
    target = max(bounds.min_replicas, min(bounds.max_replicas, target))
    if target != current:
        history = replace(history, last_change_s=now_s)
    return Decision(replicas=target, reason=why, history=history)
