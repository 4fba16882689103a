"""Placement: which (prefill, decode) pair serves a request. See docs/placement.md.

    policy = build_policy(named_config("kvferry"))          # or load_config("p.yaml")
    placement = policy.place(PlacementRequest(len(prompt), block_hashes), view)

A pipeline of filters -> scorers -> picker declared in configuration; pure apart from a
seeded random generator. The router's view reads its registry, the cluster KV index
(kv_index.py) and measured bandwidths; the simulator builds its own view.
"""

from .bandwidth import DEFAULT_TIER_GBPS, BandwidthTable, TransferConfig
from .builtin import BUILTIN, DEFAULT_POLICY, config_from_mapping, load_config, named_config
from .config import PlacementConfig, PluginSpec, parse_placement_config
from .pipeline import Pipeline, build_policy
from .types import (
    ClusterView,
    NoEligibleWorkersError,
    Placement,
    PlacementPolicy,
    PlacementRequest,
)
from .view import RouterView, StaticView

__all__ = [
    "BUILTIN",
    "DEFAULT_POLICY",
    "DEFAULT_TIER_GBPS",
    "BandwidthTable",
    "ClusterView",
    "NoEligibleWorkersError",
    "Pipeline",
    "Placement",
    "PlacementConfig",
    "PlacementPolicy",
    "PlacementRequest",
    "PluginSpec",
    "RouterView",
    "StaticView",
    "TransferConfig",
    "build_policy",
    "config_from_mapping",
    "load_config",
    "named_config",
    "parse_placement_config",
]
