"""BlockPool: exact block ids, ref counts, free-queue order, LRU eviction and events."""

from __future__ import annotations

import pytest

from kvferry.errors import CapacityError
from kvferry.services.engine.block_hash import BlockHash
from kvferry.services.engine.block_pool import (
    AllBlocksCleared,
    BlockPool,
    BlockRemoved,
    BlockStored,
)

from .factories import NUM_BLOCKS, ids, make_pool

H0, H1, H2, H3 = (BlockHash(1000 + i) for i in range(4))


def refs(pool: BlockPool) -> list[int]:
    return [b.ref_cnt for b in pool.blocks]


def take_all_free(pool: BlockPool) -> list[int]:
    """The free queue's order, observed by allocating every free block (destructive)."""
    order = ids(pool.allocate(pool.num_free_blocks))
    pool.check_invariants()
    return order


# -- construction and allocation -----------------------------------------------------------


def test_new_pool_is_all_free_in_id_order() -> None:
    pool = make_pool()
    assert (pool.num_free_blocks, pool.num_used_blocks, pool.num_cached_blocks) == (12, 0, 0)
    assert refs(pool) == [0] * NUM_BLOCKS
    pool.check_invariants()
    assert take_all_free(pool) == list(range(NUM_BLOCKS))


@pytest.mark.parametrize("num_blocks", [0, -1])
def test_pool_needs_at_least_one_block(num_blocks: int) -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks)


def test_allocate_hands_out_lowest_ids_first_with_ref_count_1() -> None:
    pool = make_pool()
    assert ids(pool.allocate(3)) == [0, 1, 2]
    assert ids(pool.allocate(2)) == [3, 4]
    assert refs(pool) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert (pool.num_free_blocks, pool.num_used_blocks) == (7, 5)
    pool.check_invariants()


def test_allocate_zero_is_a_no_op() -> None:
    pool = make_pool()
    assert pool.allocate(0) == []
    assert pool.num_free_blocks == NUM_BLOCKS
    assert pool.take_events() == []


def test_allocating_more_than_free_raises_and_changes_nothing() -> None:
    pool = make_pool()
    pool.allocate(10)
    with pytest.raises(CapacityError, match="asked for 3 KV blocks, 2 free"):
        pool.allocate(3)
    assert pool.num_free_blocks == 2
    pool.check_invariants()
    assert ids(pool.allocate(2)) == [10, 11]


def test_allocate_whole_pool_then_one_more_raises() -> None:
    pool = make_pool()
    pool.allocate(NUM_BLOCKS)
    with pytest.raises(CapacityError):
        pool.allocate(1)


# -- ref counts ------------------------------------------------------------------------------


def test_touch_and_free_count_references() -> None:
    pool = make_pool()
    b0, b1 = pool.allocate(2)
    pool.touch([b0])
    pool.touch([b0])
    assert refs(pool)[:3] == [3, 1, 0]
    pool.check_invariants()

    pool.free([b0, b1])
    assert refs(pool)[:3] == [2, 0, 0]
    assert pool.num_free_blocks == 11
    pool.check_invariants()

    pool.free([b0])
    pool.free([b0])
    assert refs(pool)[:3] == [0, 0, 0]
    assert pool.num_free_blocks == NUM_BLOCKS
    pool.check_invariants()


def test_double_free_raises() -> None:
    pool = make_pool()
    (b0,) = pool.allocate(1)
    pool.free([b0])
    with pytest.raises(RuntimeError, match="double free of KV block 0"):
        pool.free([b0])
    pool.check_invariants()


def test_freeing_a_never_allocated_block_raises() -> None:
    pool = make_pool()
    with pytest.raises(RuntimeError, match="double free of KV block 5"):
        pool.free([pool.blocks[5]])
    pool.check_invariants()


def test_touching_a_free_cached_block_takes_it_out_of_the_free_queue() -> None:
    pool = make_pool()
    (b0,) = pool.allocate(1)
    pool.cache_blocks([b0], [H0])
    pool.free([b0])
    assert (pool.num_free_blocks, b0.ref_cnt) == (NUM_BLOCKS, 0)

    hit = pool.get_cached_block(H0)
    assert hit is b0
    pool.touch([hit])
    assert (pool.num_free_blocks, b0.ref_cnt, b0.block_hash) == (11, 1, H0)
    pool.check_invariants()
    assert 0 not in take_all_free(pool)


# -- free-queue order ------------------------------------------------------------------------


def test_freed_plain_blocks_are_reused_before_untouched_ones() -> None:
    pool = make_pool()
    blocks = pool.allocate(3)
    pool.free(reversed(blocks))
    pool.check_invariants()
    # Plain freed blocks go to the front; freeing tail first leaves the head first.
    assert take_all_free(pool) == list(range(NUM_BLOCKS))


def test_freed_plain_blocks_come_before_freed_cached_ones() -> None:
    pool = make_pool()
    b0, b1, b2, b3 = pool.allocate(4)
    pool.cache_blocks([b0, b1], [H0, H1])
    pool.free([b3, b2, b1, b0])  # a sequence's blocks, tail first
    pool.check_invariants()
    assert pool.take_events() == [BlockStored((H0, H1))]

    # Plain ones (2, 3) first, then never-used ones, then cached ones: tail (1) before head (0).
    assert ids(pool.allocate(10)) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert pool.take_events() == []
    assert ids(pool.allocate(1)) == [1]
    assert pool.take_events() == [BlockRemoved((H1,))]
    assert pool.get_cached_block(H1) is None
    assert pool.get_cached_block(H0) is b0
    pool.check_invariants()


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    pool = make_pool(4)
    a, b, c, d = pool.allocate(4)
    pool.cache_blocks([a, b, c, d], [H0, H1, H2, H3])
    pool.take_events()
    for block in (c, a, d, b):
        pool.free([block])
    pool.check_invariants()

    # Reusing `a` makes it the most recently used once freed again.
    pool.touch([a])
    pool.free([a])
    pool.check_invariants()

    assert ids(pool.allocate(1)) == [2]  # c
    assert ids(pool.allocate(2)) == [3, 1]  # d, b
    assert ids(pool.allocate(1)) == [0]  # a
    assert pool.take_events() == [
        BlockRemoved((H2,)),
        BlockRemoved((H3, H1)),
        BlockRemoved((H0,)),
    ]
    assert pool.num_cached_blocks == 0
    pool.check_invariants()


def test_eviction_clears_the_block_hash_and_reallocates_it_plain() -> None:
    pool = make_pool(1)
    (b0,) = pool.allocate(1)
    pool.cache_blocks([b0], [H0])
    pool.free([b0])
    (again,) = pool.allocate(1)
    assert again is b0
    assert (b0.block_hash, b0.ref_cnt, pool.num_cached_blocks) == (None, 1, 0)
    assert pool.get_cached_block(H0) is None
    assert pool.take_events() == [BlockStored((H0,)), BlockRemoved((H0,))]
    pool.check_invariants()


# -- prefix cache ----------------------------------------------------------------------------


def test_cache_blocks_maps_hashes_and_emits_one_event_in_prefix_order() -> None:
    pool = make_pool()
    b0, b1, b2 = pool.allocate(3)
    pool.cache_blocks([b0, b1, b2], [H0, H1, H2])
    assert [b.block_hash for b in (b0, b1, b2)] == [H0, H1, H2]
    assert [pool.get_cached_block(h) for h in (H0, H1, H2)] == [b0, b1, b2]
    assert pool.num_cached_blocks == 3
    assert pool.take_events() == [BlockStored((H0, H1, H2))]
    assert pool.take_events() == []
    pool.check_invariants()


def test_cache_blocks_skips_blocks_that_already_carry_a_hash() -> None:
    pool = make_pool()
    b0, b1 = pool.allocate(2)
    pool.cache_blocks([b0], [H0])
    pool.cache_blocks([b0, b1], [H0, H1])
    pool.cache_blocks([b0], [H2])  # a block keeps the hash it was first published under
    assert pool.take_events() == [BlockStored((H0,)), BlockStored((H1,))]
    assert (pool.num_cached_blocks, b0.block_hash, pool.get_cached_block(H2)) == (2, H0, None)
    pool.check_invariants()


def test_duplicate_hash_in_another_block_is_not_recached() -> None:
    pool = make_pool()
    b0, b1, b2 = pool.allocate(3)
    pool.cache_blocks([b0], [H0])
    pool.cache_blocks([b1, b2], [H0, H1])  # b1 computed the same content as b0

    assert (b1.block_hash, b2.block_hash) == (None, H1)
    assert pool.get_cached_block(H0) is b0
    assert pool.take_events() == [BlockStored((H0,)), BlockStored((H1,))]
    pool.check_invariants()

    # The private copy is freed as plain: reused first, without an eviction event.
    pool.free([b2, b1, b0])
    pool.check_invariants()
    assert ids(pool.allocate(1)) == [1]
    assert pool.take_events() == []


def test_cache_blocks_with_only_known_hashes_emits_nothing() -> None:
    pool = make_pool()
    b0, b1 = pool.allocate(2)
    pool.cache_blocks([b0], [H0])
    pool.take_events()
    pool.cache_blocks([b1], [H0])
    assert pool.take_events() == []


def test_cache_blocks_needs_one_hash_per_block() -> None:
    pool = make_pool()
    b0, b1 = pool.allocate(2)
    with pytest.raises(ValueError):
        pool.cache_blocks([b0, b1], [H0])


def test_caching_disabled_never_stores() -> None:
    pool = make_pool(enable_caching=False)
    b0, b1 = pool.allocate(2)
    pool.cache_blocks([b0, b1], [H0, H1])
    assert (b0.block_hash, pool.num_cached_blocks) == (None, 0)
    assert pool.get_cached_block(H0) is None
    assert pool.take_events() == []
    pool.check_invariants()


def test_reset_prefix_cache_refuses_while_a_block_is_used() -> None:
    pool = make_pool()
    b0, b1 = pool.allocate(2)
    pool.cache_blocks([b0], [H0])
    pool.free([b0])
    pool.take_events()

    assert pool.reset_prefix_cache() is False
    assert (pool.num_cached_blocks, b0.block_hash) == (1, H0)
    assert pool.take_events() == []
    pool.check_invariants()

    pool.free([b1])
    assert pool.reset_prefix_cache() is True
    assert (pool.num_cached_blocks, b0.block_hash) == (0, None)
    assert pool.get_cached_block(H0) is None
    assert pool.take_events() == [AllBlocksCleared()]
    pool.check_invariants()
    # Cleared blocks are plain now: reallocating them evicts nothing.
    assert sorted(take_all_free(pool)) == list(range(NUM_BLOCKS))
    assert pool.take_events() == []


def test_take_events_returns_oldest_first_and_drains() -> None:
    pool = make_pool(2)
    b0, b1 = pool.allocate(2)
    pool.cache_blocks([b0, b1], [H0, H1])
    pool.free([b1, b0])
    pool.allocate(1)
    pool.free(pool.blocks[1:2])
    assert pool.reset_prefix_cache() is True
    assert pool.take_events() == [
        BlockStored((H0, H1)),
        BlockRemoved((H1,)),
        AllBlocksCleared(),
    ]
    assert pool.take_events() == []


# -- the invariant checker is not vacuous ----------------------------------------------------


def test_check_invariants_catches_a_used_block_in_the_free_queue() -> None:
    pool = make_pool()
    pool.blocks[3].ref_cnt = 1
    with pytest.raises(AssertionError, match="block 3"):
        pool.check_invariants()


def test_check_invariants_catches_a_hash_not_in_the_map() -> None:
    pool = make_pool()
    pool.blocks[4].block_hash = H0
    with pytest.raises(AssertionError, match="block 4"):
        pool.check_invariants()
