"""Where a worker sits, and how far KV travels between two workers: shared by workers
(which discover and report their labels) and the router (which ranks pairs by tier).

A worker registers canonical labels (the keys below). Tiers order pairs from nearest to
farthest; two workers share a tier when every level up to it matches and is known.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

NODE = "node"
"""The host (Kubernetes node name, or the hostname)."""
NVLINK_DOMAIN = "nvlink_domain"
"""GPUs that reach each other over NVLink (an NVL72 rack's clique, or one HGX board)."""
RACK = "rack"
ZONE = "zone"

LABEL_KEYS = (NODE, NVLINK_DOMAIN, RACK, ZONE)


class Tier(enum.IntEnum):
    """Transfer tier between two workers, nearest first (lower is better)."""

    SAME_NODE = 0
    SAME_NVLINK_DOMAIN = 1
    SAME_RACK = 2
    SAME_ZONE = 3
    ELSEWHERE = 4

    @property
    def label(self) -> str:
        return self.name.lower()


_TIER_BY_KEY = (
    (NODE, Tier.SAME_NODE),
    (NVLINK_DOMAIN, Tier.SAME_NVLINK_DOMAIN),
    (RACK, Tier.SAME_RACK),
    (ZONE, Tier.SAME_ZONE),
)


def tier_between(a: Mapping[str, str], b: Mapping[str, str]) -> Tier:
    """The nearest level both label sets name with the same value.

    An unknown (missing or empty) label never matches: two workers with no labels are
    `ELSEWHERE`, so a cluster without topology information gets no false locality.
    """
    for key, tier in _TIER_BY_KEY:
        va, vb = a.get(key, ""), b.get(key, "")
        if va and va == vb:
            return tier
    return Tier.ELSEWHERE
