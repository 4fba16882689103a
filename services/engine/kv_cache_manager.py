"""Per-request block tables on top of the block pool: prefix lookup, slot allocation, free.

A request's blocks cover positions [0, num_computed_tokens + scheduled tokens). Full blocks
are published to the prefix cache as soon as the step that computes them is scheduled
(NOTE: within one model step every layer writes all new K/V before any attention reads,
so a request scheduled in the same step may already hit them).
"""

from __future__ import annotations

from .block_hash import hash_block_tokens
from .block_pool import BlockId, BlockPool, KVBlock
from .request import Request, RequestId


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_caching)
        self._blocks: dict[RequestId, list[KVBlock]] = {}
        self._num_cached: dict[RequestId, int] = {}
        self.published_in_step: list[KVBlock] = []
        """Blocks published since the scheduler's last `begin_step` (for rollback)."""

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def block_ids(self, request_id: RequestId) -> list[BlockId]:
        return [b.block_id for b in self._blocks.get(request_id, ())]

    def _update_hashes(self, request: Request) -> None:
        """Extend the request's chained hashes to every full block of its known tokens."""
        bs = self.block_size
        done = len(request.block_hashes)
        full = request.num_tokens // bs
        if full > done:
            parent = request.block_hashes[-1] if done else None
            tokens = request.token_slice(done * bs, full * bs)
            request.block_hashes.extend(hash_block_tokens(tokens, bs, parent))

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """The longest run of cached blocks matching the request's prefix.

        At least one token is always left to compute: the model must run on the last
        known token to produce the next one.
        """
        if not self.enable_caching:
            return []
        self._update_hashes(request)
        limit = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:limit]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        hits: list[KVBlock] | None = None,
        *,
        publish: bool = True,
    ) -> list[KVBlock] | None:
        """Reserve blocks for `num_new_tokens` beyond the computed ones (after `hits`).

        Returns the newly allocated blocks, or None (changing nothing) when the pool
        cannot supply them. With `publish=False` full blocks are not entered in the prefix
        cache yet (their KV arrives from elsewhere; see `publish_computed_blocks`).
        """
        hits = hits or []
        blocks = self._blocks.setdefault(request.request_id, [])
        computed = request.num_computed_tokens + len(hits) * self.block_size
        need = self.blocks_needed(computed + num_new_tokens) - len(blocks) - len(hits)
        # Hits sitting in the free queue stop being allocatable once touched.
        free_hits = sum(1 for b in hits if b.ref_cnt == 0)
        if need > self.pool.num_free_blocks - free_hits:
            if not blocks:
                del self._blocks[request.request_id]
            return None
        self.pool.touch(hits)
        blocks.extend(hits)
        new_blocks = self.pool.allocate(max(need, 0))
        blocks.extend(new_blocks)
        if hits:
            self._num_cached[request.request_id] = len(blocks) - len(new_blocks)
        if self.enable_caching and publish:
            self._cache_full_blocks(request, computed + num_new_tokens)
        return new_blocks

    def publish_computed_blocks(self, request: Request) -> None:
        """Enter the request's full, computed blocks in the prefix cache."""
        if self.enable_caching:
            self._cache_full_blocks(request, request.num_computed_tokens)

    def _cache_full_blocks(self, request: Request, num_computed_after_step: int) -> None:
        self._update_hashes(request)
        blocks = self._blocks[request.request_id]
        start = self._num_cached.get(request.request_id, 0)
        end = min(num_computed_after_step // self.block_size, len(request.block_hashes))
        if end > start:
            published = self.pool.cache_blocks(blocks[start:end], request.block_hashes[start:end])
            self.published_in_step.extend(published)
            self._num_cached[request.request_id] = end

    def free(self, request: Request) -> None:
        """Release every block of the request (tail first, so the tail is evicted first)."""
        blocks = self._blocks.pop(request.request_id, [])
        self._num_cached.pop(request.request_id, None)
        self.pool.free(reversed(blocks))

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks
