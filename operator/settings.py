"""The operator process's configuration (one frozen dataclass; env vars map onto it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvferry.operator.planner import PlannerConfig

DEFAULT_IMAGE = "ghcr.io/kvferry/kvferry:0.1.0"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    default_image: str = DEFAULT_IMAGE
    """Image for clusters whose spec names none; the chart sets the operator's own."""
    status_interval_s: float = 15.0
    """How often each cluster's status is refreshed and its planner consulted."""
    retry_delay_s: float = 10.0
    """Delay before retrying after a transient API error."""
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def __post_init__(self) -> None:
        if not self.default_image:
            raise ValueError("default_image must be set (KVFERRY_DEFAULT_IMAGE)")
        for name in ("status_interval_s", "retry_delay_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """`KVFERRY_DEFAULT_IMAGE`, `KVFERRY_STATUS_INTERVAL_S`, `KVFERRY_RETRY_DELAY_S`."""
        env = os.environ if env is None else env
        base = cls()
        interval = float(env.get("KVFERRY_STATUS_INTERVAL_S", base.status_interval_s))
        return cls(
            default_image=env.get("KVFERRY_DEFAULT_IMAGE", base.default_image),
            status_interval_s=interval,
            retry_delay_s=float(env.get("KVFERRY_RETRY_DELAY_S", base.retry_delay_s)),
            planner=PlannerConfig(interval_s=interval),
        )
