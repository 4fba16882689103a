"""The placement config parser: good YAML builds the declared pipeline; every bad key or
value fails with an error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvferry.errors import ConfigError
from kvferry.services.router.config import RouterConfig
from kvferry.services.router.placement import (
    BUILTIN,
    PlacementConfig,
    PluginSpec,
    build_policy,
    config_from_mapping,
    load_config,
    named_config,
)
from kvferry.services.router.server import placement_config

EXAMPLE = """\
policy: cache-aware
short_prompt_tokens: 32
candidates: 16
shortlist: 2
picker: max_score
seed: 7
filters: [healthy, not_excluded, {name: max_in_flight, limit: 8}]
scorers:
  - {name: prefix_hits, weight: 3}
  - {name: running_load, weight: 1, load_scale: 4}
  - {name: transfer_time, weight: 0.5, time_scale_s: 0.02}
transfer:
  tier_gbps: {elsewhere: 1.5}
  ewma_alpha: 0.5
"""


def test_a_yaml_file_declares_the_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "placement.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.name == "cache-aware"
    assert (config.short_prompt_tokens, config.candidates, config.shortlist, config.seed) == (
        32,
        16,
        2,
        7,
    )
    assert config.filters == (
        PluginSpec("healthy"),
        PluginSpec("not_excluded"),
        PluginSpec("max_in_flight", 1.0, (("limit", 8.0),)),
    )
    assert config.scorers == (
        PluginSpec("prefix_hits", 3.0),
        PluginSpec("running_load", 1.0, (("load_scale", 4.0),)),
        PluginSpec("transfer_time", 0.5, (("time_scale_s", 0.02),)),
    )
    assert config.transfer.tier_gbps["elsewhere"] == 1.5
    assert config.transfer.tier_gbps["same_node"] == 300.0  # unnamed tiers keep defaults
    assert config.transfer.ewma_alpha == 0.5
    build_policy(config)  # and it builds


def test_every_builtin_builds() -> None:
    assert set(BUILTIN) == {"random", "round-robin", "least-loaded", "cache-aware", "kvferry"}
    for name in BUILTIN:
        assert build_policy(named_config(name)).config.name == name


def test_router_flags_pick_the_policy(tmp_path: Path) -> None:
    assert placement_config(RouterConfig(placement="least-loaded")).name == "least-loaded"
    assert placement_config(RouterConfig(short_prompt_tokens=9)).short_prompt_tokens == 9
    path = tmp_path / "p.yaml"
    path.write_text("seed: 3\n")  # no policy: key -> --placement's built-in
    config = placement_config(RouterConfig(placement="cache-aware", placement_config=str(path)))
    assert (config.name, config.seed) == ("cache-aware", 3)
    with pytest.raises(ValueError, match="placement must be one of"):
        RouterConfig(placement="fastest")
    with pytest.raises(ValueError, match="index_poll_interval_s"):
        RouterConfig(index_poll_interval_s=-1)


BAD = [
    # (name, mapping, error must say)
    ("unknown top-level key", {"scorer": []}, "unknown placement key 'scorer'"),
    ("unknown policy", {"policy": "fastest"}, "unknown placement policy 'fastest'"),
    (
        "unknown filter",
        {"filters": ["healthy", "not_excluded", "fast"]},
        r"filters\[2\]: unknown filter 'fast'",
    ),
    ("required filter missing", {"filters": ["healthy"]}, "must include 'not_excluded'"),
    ("unknown scorer", {"scorers": [{"name": "vibes"}]}, r"scorers\[0\]: unknown scorer 'vibes'"),
    ("scorer without a name", {"scorers": [{"weight": 1}]}, r"scorers\[0\] needs a 'name'"),
    (
        "unknown scorer parameter",
        {"scorers": [{"name": "running_load", "scale": 2}]},
        r"scorers\[0\]\.scale: unknown parameter",
    ),
    (
        "negative weight",
        {"scorers": [{"name": "prefix_hits", "weight": -1}]},
        r"scorers\[0\]\.weight must be >= 0",
    ),
    (
        "weight not a number",
        {"scorers": [{"name": "prefix_hits", "weight": "high"}]},
        r"scorers\[0\]\.weight must be a number",
    ),
    (
        "bad scorer parameter value",
        {"scorers": [{"name": "running_load", "load_scale": 0}]},
        r"scorers\[0\] \(running_load\): load_scale must be positive",
    ),
    (
        "bad filter parameter value",
        {"filters": ["healthy", "not_excluded", {"name": "max_in_flight", "limit": 0}]},
        r"filters\[2\] \(max_in_flight\): limit",
    ),
    (
        "weight on a filter",
        {"filters": ["healthy", "not_excluded", {"name": "healthy", "weight": 2}]},
        r"filters\[2\]\.weight: unknown parameter",
    ),
    (
        "max_score with no weight",
        {"scorers": [{"name": "prefix_hits", "weight": 0}]},
        "at least one scorer with a positive weight",
    ),
    ("unknown picker", {"picker": "best"}, "picker: unknown 'best'"),
    ("shortlist of zero", {"shortlist": 0}, "shortlist must be at least 1"),
    ("negative candidates", {"candidates": -1}, "candidates must be >= 0"),
    ("candidates not an integer", {"candidates": 2.5}, "candidates must be an integer"),
    ("filters not a list", {"filters": "healthy"}, "filters must be a list"),
    ("unknown transfer key", {"transfer": {"speed": 1}}, r"transfer\.speed: unknown key"),
    ("unknown tier", {"transfer": {"tier_gbps": {"same_planet": 1}}}, "unknown tier"),
    (
        "zero bandwidth",
        {"transfer": {"tier_gbps": {"same_rack": 0}}},
        r"tier_gbps\.same_rack must be positive",
    ),
    ("bad ewma", {"transfer": {"ewma_alpha": 0}}, r"ewma_alpha must be in \(0, 1\]"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_configs_name_the_bad_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read placement config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("scorers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- healthy\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listed)
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("shortlist: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: shortlist must be at least 1"):
        load_config(bad_key)


def test_config_dataclass_validates_directly() -> None:
    with pytest.raises(ConfigError, match="picker"):
        PlacementConfig(picker="nope")
