"""The named built-in policies (`--placement NAME`, `kvferry sim --policy NAME`, Helm).

- random: a uniform eligible decode worker, then a uniform prefill worker.
- round-robin: each side in turn, by worker id.
- least-loaded: the decode worker with the fewest running/queued sequences, the prefill
  worker with the fewest queued prompt tokens, chosen separately (placement v1).
- cache-aware: prefix-cache hits on both sides plus load, chosen jointly; no topology.
- kvferry: cache-aware plus the estimated KV transfer time between the pair (topology tier,
  then measured bandwidth), with near decode workers drawn for each prefill candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvferry.errors import ConfigError

from .config import PlacementConfig, PluginSpec, load_yaml, parse_placement_config

_LOAD = (
    PluginSpec("queued_prefill_tokens", 1.0),
    PluginSpec("running_load", 1.0),
    PluginSpec("free_kv_blocks", 0.25),
)
_CACHE = (
    PluginSpec("prefix_hits", 2.0),
    PluginSpec("decode_prefix_hits", 1.0),
)

BUILTIN: Mapping[str, PlacementConfig] = {
    "random": PlacementConfig(name="random", picker="random"),
    "round-robin": PlacementConfig(name="round-robin", picker="round_robin"),
    "least-loaded": PlacementConfig(name="least-loaded", scorers=_LOAD, shortlist=1),
    # NOTE: 8 random candidates per side (+ up to 4 cache holders), 2 x 2 shortlisted pairs + 2
    # near decode workers per prefill: <= 8 pair scores, well under 200 us at 1,000 workers.
    "cache-aware": PlacementConfig(
        name="cache-aware", scorers=(*_CACHE, *_LOAD), candidates=8, shortlist=2
    ),
    "kvferry": PlacementConfig(
        name="kvferry",
        scorers=(*_CACHE, *_LOAD, PluginSpec("transfer_time", 1.0)),
        candidates=8,
        shortlist=2,
        local_candidates=2,
    ),
}
DEFAULT_POLICY = "kvferry"


def named_config(name: str, **changes: Any) -> PlacementConfig:
    """A built-in by name, with fields replaced (e.g. `short_prompt_tokens=16`)."""
    try:
        config = BUILTIN[name]
    except KeyError:
        raise ConfigError(
            f"unknown placement policy {name!r}; built-ins: {', '.join(BUILTIN)}"
        ) from None
    return replace(config, **changes) if changes else config


def config_from_mapping(
    data: Mapping[str, Any], *, default_policy: str = DEFAULT_POLICY, **base_changes: Any
) -> PlacementConfig:
    """A config from a mapping: its `policy:` built-in (else `default_policy`) with
    `base_changes` applied, then the mapping's keys."""
    policy = data.get("policy", default_policy) if isinstance(data, Mapping) else default_policy
    if not isinstance(policy, str):
        raise ConfigError(f"policy must be a built-in name, got {policy!r}")
    return parse_placement_config(data, named_config(policy, **base_changes))


def load_config(
    path: str | Path, *, default_policy: str = DEFAULT_POLICY, **base_changes: Any
) -> PlacementConfig:
    """A config from a YAML file (see config.py for the format)."""
    data = load_yaml(path)
    try:
        return config_from_mapping(data, default_policy=default_policy, **base_changes)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
