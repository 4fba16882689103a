"""A simulated worker's KV memory: hits, pinning, commit, LRU eviction and its events."""

from __future__ import annotations

import random

import pytest

from kvferry.sim.kv_cache import REMOVED, STORED, BlockCache

B = 4  # tokens per block in these tiny worlds


def test_allocate_commit_free_and_hit() -> None:
    c = BlockCache(capacity_tokens=10 * B, block_tokens=B)
    assert c.allocate(1, (10, 11), 2 * B + 3) == 0
    assert c.used_tokens == 2 * B + 3 and c.events == []
    assert c.hits((10, 11)) == 0  # not hashed until its KV exists
    c.commit(1)
    assert c.events == [(STORED, (10, 11))]
    assert c.hits((10, 11, 12)) == 2 and c.hits((11,)) == 1 and c.hits((9, 10)) == 0
    # A second request sharing the first block pins it and reserves only the rest.
    assert c.allocate(2, (10, 12), 2 * B + 1) == 1
    assert c.used_tokens == (2 * B + 3) + (B + 1)
    c.free(1)
    c.free(2)
    assert c.used_tokens == 2 * B  # blocks 10 and 11 stay cached
    assert c.free_tokens == c.capacity  # ...and count as free
    c.check_invariants()


def test_lru_evicts_oldest_unused_blocks_tail_first() -> None:
    c = BlockCache(capacity_tokens=4 * B, block_tokens=B)
    for rid, hashes in ((1, (1, 2)), (2, (3, 4))):
        c.allocate(rid, hashes, 2 * B)
        c.commit(rid)
        c.free(rid)
    c.events.clear()
    # Freed tail first: LRU order is 2, 1, 4, 3. One new block evicts block 2 (request
    # 1's tail), keeping its head.
    assert c.allocate(3, (), B) == 0
    assert c.events == [(REMOVED, (2,))]
    assert c.hits((1, 2)) == 1 and c.hits((3, 4)) == 2
    c.events.clear()
    # Pinned hits are not evictable: 4 blocks used, 1 more needed, only block 1 to evict.
    assert c.allocate(4, (3, 4), 3 * B + 1) is None
    assert c.allocate(4, (3, 4), 3 * B) == 2
    assert c.events == [(REMOVED, (1,))]
    assert c.used_tokens == c.capacity
    c.check_invariants()


def test_a_request_that_does_not_fit_changes_nothing() -> None:
    c = BlockCache(capacity_tokens=3 * B, block_tokens=B)
    c.allocate(1, (1,), 2 * B)
    before = (c.used_tokens, list(c.events))
    assert not c.fits((), 2 * B)
    assert c.allocate(2, (), 2 * B) is None
    assert (c.used_tokens, c.events) == before
    with pytest.raises(ValueError, match="already holds"):
        c.allocate(1, (), B)
    with pytest.raises(ValueError, match="cover the hashed"):
        c.allocate(3, (5, 6), B)


def test_commit_shares_a_block_stored_meanwhile() -> None:
    c = BlockCache(capacity_tokens=10 * B, block_tokens=B)
    c.allocate(1, (1, 2), 2 * B)
    c.allocate(2, (1, 2), 2 * B)  # both miss: neither is computed yet
    c.commit(1)
    c.commit(2)  # block 1, 2 exist now: request 2 shares them, its copies are dropped
    assert c.events == [(STORED, (1, 2))]
    assert c.used_tokens == 2 * B
    c.check_invariants()
    c.free(1)
    c.free(2)
    c.check_invariants()


def test_random_operations_keep_the_books_against_a_brute_force_model() -> None:
    rng = random.Random(7)
    cap = 12 * B
    c = BlockCache(capacity_tokens=cap, block_tokens=B)
    holds: dict[int, tuple[tuple[int, ...], int, int, bool]] = {}  # hashes, total, hit, done
    resident: set[int] = set()
    for step in range(3000):
        op = rng.random()
        if op < 0.5 or not holds:
            n = rng.randint(0, 4)
            first = rng.randint(0, 3) * 10
            hashes = tuple(range(first, first + n))
            total = n * B + rng.randint(0, 2 * B)
            hit = 0
            while hit < n and hashes[hit] in resident:
                hit += 1
            got = c.allocate(step, hashes, total)
            if got is not None:
                assert got == hit
                holds[step] = (hashes, total, hit, False)
        elif op < 0.75:
            rid = rng.choice(sorted(holds))
            hashes, total, hit, done = holds[rid]
            if not done:
                c.commit(rid)
                holds[rid] = (hashes, total, hit, True)
        else:
            rid = rng.choice(sorted(holds))
            c.free(rid)
            del holds[rid]
        for kind, hashes in c.events:
            if kind == STORED:
                assert not resident & set(hashes)
                resident |= set(hashes)
            else:
                assert set(hashes) <= resident
                resident -= set(hashes)
        c.events.clear()
        c.check_invariants()
        # What the events said is exactly what the cache holds.
        assert {h for h in range(40) if c.hits((h,))} == resident
        # Memory: every resident block once, plus each request's tokens outside hashed
        # blocks (before commit its misses are private; after, only its tail).
        private = sum(
            total - (len(hashes) if done else hit) * B
            for hashes, total, hit, done in holds.values()
        )
        assert c.used_tokens == len(resident) * B + private <= cap
