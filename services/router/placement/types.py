"""What placement takes and gives: the request, the answer, the cluster as a policy sees it.

A policy is pure: `place(request, view) -> Placement`. The router builds the view from its
registry, its cluster KV index and its measured bandwidths; the simulator builds one from
its model of a cluster. Neither the policy nor the view does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvferry.errors import KvferryError
from kvferry.topology import Tier

from ..workers import WorkerId, WorkerRecord


class NoEligibleWorkersError(KvferryError):
    """No worker can take this request now (none registered, all draining or excluded).

    The router answers UNAVAILABLE (or keeps queueing when decode workers were only full)."""


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    num_prompt_tokens: int
    block_hashes: tuple[int, ...] = ()
    """Chained hashes of the prompt's FULL blocks, in prefix order (empty: no prefix
    information; cache scorers then score every worker 0)."""
    exclude: frozenset[WorkerId] = field(default_factory=frozenset)
    """Workers that already failed this request (retries go elsewhere)."""
    block_size: int = 0
    """Tokens per block behind `block_hashes` (0: each worker's reported block size)."""

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must be >= 0, got {self.num_prompt_tokens}")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0, got {self.block_size}")


@dataclass(frozen=True, slots=True)
class Placement:
    decode: WorkerId
    prefill: WorkerId | None
    """None: the decode worker computes the prompt itself."""
    prefill_hit_blocks: int = 0
    """Prefix blocks cached on the worker that computes the prompt (the decode worker's
    own hits when `prefill` is None)."""
    decode_hit_blocks: int = 0
    """Prefix blocks already cached on the decode worker."""
    tier: Tier | None = None
    """Transfer tier between the pair (None: no hop)."""
    est_transfer_s: float = 0.0
    """Estimated seconds to move the KV the decode worker lacks (0 without a hop)."""
    score: float = 0.0
    """The chosen option's score in [0, 1] (0 for pickers that do not score)."""


class ClusterView(Protocol):
    """The cluster as a policy sees it at one decision."""

    def workers(self) -> Sequence[WorkerRecord]:
        """Every registered worker (draining ones included; filters drop them).

        NOTE: a policy caches its role partitions while this returns the same records in
        the same order, so return the same objects (updated in place) between calls."""
        ...

    def prefix_hits(self, block_hashes: Sequence[int]) -> Mapping[WorkerId, int]:
        """Per worker: how many LEADING blocks of `block_hashes` it holds (absent: 0)."""
        ...

    def transfer_s(self, src: WorkerRecord, dst: WorkerRecord, nbytes: int) -> float:
        """Estimated seconds to move `nbytes` of KV from `src` to `dst`."""
        ...


class PlacementPolicy(Protocol):
    def place(self, request: PlacementRequest, view: ClusterView) -> Placement:
        """Pick a decode worker and, for a prefill hop, a prefill worker.

        Raises NoEligibleWorkersError when no decode-capable worker is eligible."""
        ...
