"""One simulated worker's KV memory: hashed full prompt blocks shared between requests and
kept as an LRU prefix cache once unused, plus each request's private tokens (its partial
last block, its output, blocks not yet computed or received).

A request `allocate`s when it starts (leading blocks already resident are hits and get
pinned), `commit`s when its new blocks hold KV (they become hashed and shareable, one
`stored` event), and `free`s when done (its hashed blocks join the LRU tail, last block
first, so a prompt's tail is evicted before its head, as the engine does). Evictions emit
`removed` events. Capacity counts evictable blocks as free, as the engine's free count
does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

STORED = "stored"
REMOVED = "removed"


@dataclass(slots=True)
class _Hold:
    pinned: list[int]  # hashed blocks this request references, prefix order
    pending: tuple[int, ...]  # full blocks it will commit (computed or received)
    private: int  # tokens it holds outside hashed blocks


class BlockCache:
    def __init__(self, capacity_tokens: int, block_tokens: int) -> None:
        if block_tokens < 1 or capacity_tokens < block_tokens:
            raise ValueError(
                f"KV capacity ({capacity_tokens} tokens) must hold at least one block of"
                f" {block_tokens} tokens"
            )
        self.capacity = capacity_tokens
        self.block_tokens = block_tokens
        self._ref: dict[int, int] = {}  # resident hashed block -> requests pinning it
        self._lru: OrderedDict[int, None] = OrderedDict()  # unpinned resident, oldest first
        self._private = 0
        self._holds: dict[int, _Hold] = {}
        self.events: list[tuple[str, tuple[int, ...]]] = []
        """(STORED | REMOVED, block hashes) in order; the owner drains it."""

    # -- queries ------------------------------------------------------------------------

    @property
    def used_tokens(self) -> int:
        """Tokens of memory holding KV (including evictable cached blocks)."""
        return len(self._ref) * self.block_tokens + self._private

    @property
    def free_tokens(self) -> int:
        """Tokens a new request could get (evictable cached blocks count as free)."""
        return self.capacity - self.used_tokens + len(self._lru) * self.block_tokens

    @property
    def cached_blocks(self) -> int:
        return len(self._ref)

    def hits(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` are resident."""
        n = 0
        for h in hashes:
            if h not in self._ref:
                break
            n += 1
        return n

    def holds(self, rid: int) -> bool:
        return rid in self._holds

    # -- a request's life -----------------------------------------------------------------

    def fits(self, hashes: Sequence[int], total_tokens: int) -> bool:
        """Whether `allocate(_, hashes, total_tokens)` would succeed now."""
        hit = self.hits(hashes)
        need = total_tokens - hit * self.block_tokens
        evictable = len(self._lru) - sum(1 for h in hashes[:hit] if h in self._lru)
        return self.used_tokens + need - evictable * self.block_tokens <= self.capacity

    def allocate(self, rid: int, hashes: Sequence[int], total_tokens: int) -> int | None:
        """Reserve `total_tokens` for request `rid` whose prompt's full blocks are `hashes`;
        the number of leading blocks it hits, or None if it does not fit now."""
        if rid in self._holds:
            raise ValueError(f"request {rid} already holds KV here")
        if total_tokens < len(hashes) * self.block_tokens:
            raise ValueError("total_tokens must cover the hashed blocks")
        if not self.fits(hashes, total_tokens):
            return None
        hit = self.hits(hashes)
        need = total_tokens - hit * self.block_tokens
        for h in hashes[:hit]:
            self._pin(h)
        self._private += need
        self._evict_until_fits()
        self._holds[rid] = _Hold(list(hashes[:hit]), tuple(hashes[hit:]), need)
        return hit

    def commit(self, rid: int) -> None:
        """The request's pending blocks now hold KV: hash them (shared, indexable)."""
        hold = self._holds[rid]
        stored = []
        for h in hold.pending:
            if h in self._ref:
                self._pin(h)  # NOTE: another request stored it meanwhile: share, drop ours
            else:
                self._ref[h] = 1
                stored.append(h)
            hold.private -= self.block_tokens
            self._private -= self.block_tokens
            hold.pinned.append(h)
        hold.pending = ()
        if stored:
            self.events.append((STORED, tuple(stored)))

    def free(self, rid: int) -> None:
        """Release the request's memory; its hashed blocks stay cached until evicted."""
        hold = self._holds.pop(rid)
        self._private -= hold.private
        for h in reversed(hold.pinned):
            self._ref[h] -= 1
            if self._ref[h] == 0:
                self._lru[h] = None

    # -- internals ------------------------------------------------------------------------

    def _pin(self, h: int) -> None:
        self._ref[h] += 1
        self._lru.pop(h, None)

    def _evict_until_fits(self) -> None:
        removed = []
        while self.used_tokens > self.capacity:
            h, _ = self._lru.popitem(last=False)
            del self._ref[h]
            removed.append(h)
        if removed:
            self.events.append((REMOVED, tuple(removed)))

    def check_invariants(self) -> None:
        """Raise ValueError if the bookkeeping is inconsistent (for tests)."""
        pins: dict[int, int] = {}
        for hold in self._holds.values():
            for h in hold.pinned:
                pins[h] = pins.get(h, 0) + 1
        for h, n in self._ref.items():
            if n != pins.get(h, 0) or ((n == 0) != (h in self._lru)):
                raise ValueError(f"block {h}: ref {n}, pins {pins.get(h, 0)}, lru {h in self._lru}")
        if self._private != sum(hold.private for hold in self._holds.values()):
            raise ValueError("private tokens do not match the holds")
        if self.used_tokens > self.capacity or self._private < 0:
            raise ValueError(f"used {self.used_tokens} of {self.capacity} tokens")
