"""The pool of fixed-size KV blocks: reference counts, prefix cache, LRU eviction, events.

Invariants (checked by `check_invariants`, pinned by tests):
- a block is in the free queue iff its ref_cnt is 0;
- a block with a hash is the one entry for that hash in the cache map;
- free blocks without a hash sit at the front of the free queue (taken first); freed
  hashed blocks join the back, so the least recently used cached block is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NewType

from kvferry.errors import CapacityError

from .block_hash import BlockHash

BlockId = NewType("BlockId", int)


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: BlockId
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Blocks that now hold reusable prefix KV (in prefix order)."""

    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks whose prefix KV was evicted."""

    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class BlockPool:
    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(BlockId(i)) for i in range(num_blocks)]
        self._free: OrderedDict[BlockId, KVBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks
        )
        self._cached: dict[BlockHash, KVBlock] = {}
        self._events: list[KVEvent] = []

    # -- queries ---------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding reusable prefix KV, in use or free."""
        return len(self._cached)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        return self._cached.get(block_hash)

    def cached_hashes(self) -> list[BlockHash]:
        """Every hash the prefix cache holds now (the router index's snapshot)."""
        return list(self._cached)

    # -- allocation ------------------------------------------------------------------------
    def allocate(self, n: int) -> list[KVBlock]:
        """Take n free blocks (ref_cnt 1), evicting least recently used cached ones."""
        if n > len(self._free):
            raise CapacityError(f"asked for {n} KV blocks, {len(self._free)} free")
        out: list[KVBlock] = []
        evicted: list[BlockHash] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                evicted.append(block.block_hash)
                del self._cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        if evicted:
            self._events.append(BlockRemoved(tuple(evicted)))
        return out

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on prefix-cache hits (pulling free ones out of the free queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference each. Pass a sequence's blocks tail first (evicted first)."""
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of KV block {block.block_id}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block
                if block.block_hash is None:
                    self._free.move_to_end(block.block_id, last=False)

    # -- prefix cache ----------------------------------------------------------------------
    def cache_blocks(self, blocks: list[KVBlock], hashes: list[BlockHash]) -> list[KVBlock]:
        """Publish full, computed blocks (in prefix order) under their chained hashes.
        Returns the blocks newly published."""
        if not self.enable_caching:
            return []
        stored: list[BlockHash] = []
        published: list[KVBlock] = []
        for block, block_hash in zip(blocks, hashes, strict=True):
            if block.block_hash is not None:
                continue
            if block_hash in self._cached:
                # NOTE: same content already cached in another block (two requests computed
                # it in the same step); this copy stays private and is freed as plain.
                continue
            block.block_hash = block_hash
            self._cached[block_hash] = block
            stored.append(block_hash)
            published.append(block)
        if stored:
            self._events.append(BlockStored(tuple(stored)))
        return published

    def uncache(self, blocks: list[KVBlock]) -> None:
        """Withdraw blocks from the prefix cache (their KV turned out not to be written)."""
        removed: list[BlockHash] = []
        for block in blocks:
            if block.block_hash is None or self._cached.get(block.block_hash) is not block:
                continue
            del self._cached[block.block_hash]
            removed.append(block.block_hash)
            block.block_hash = None
            if block.ref_cnt == 0:
                self._free.move_to_end(block.block_id, last=False)
        if removed:
            self._events.append(BlockRemoved(tuple(removed)))

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash; only when no block is in use. Returns whether it did."""
        if self.num_used_blocks:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        self._events.append(AllBlocksCleared())
        return True

    def take_events(self) -> list[KVEvent]:
        """Events since the last call, oldest first (the worker publishes them)."""
        events, self._events = self._events, []
        return events

    def check_invariants(self) -> None:
        for block in self.blocks:
            if (block.ref_cnt == 0) != (block.block_id in self._free):
                raise AssertionError(f"block {block.block_id}: ref_cnt/free-queue mismatch")
            if block.block_hash is not None and self._cached.get(block.block_hash) is not block:
                raise AssertionError(f"block {block.block_id}: hash not mapped to it")
        if len(self._cached) != sum(b.block_hash is not None for b in self.blocks):
            raise AssertionError("cache map has blocks that do not carry its hash")
