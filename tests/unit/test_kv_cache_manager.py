"""KVCacheManager: slot allocation, prefix-cache lookup and publication, free.

Block size 4, a dozen blocks. `run_step` plays scheduler + model: it allocates slots (after
any prefix hits) and marks the scheduled tokens computed.
"""

from __future__ import annotations

import pytest

from kvferry.services.engine.block_hash import hash_block_tokens
from kvferry.services.engine.block_pool import BlockRemoved, BlockStored, KVBlock
from kvferry.services.engine.kv_cache_manager import KVCacheManager, cdiv
from kvferry.services.engine.request import Request

from .factories import BLOCK_SIZE, NUM_BLOCKS, ids, make_kv, make_request


def run_step(
    kv: KVCacheManager, request: Request, num_new: int, hits: list[KVBlock] | None = None
) -> list[KVBlock] | None:
    new = kv.allocate_slots(request, num_new, hits)
    if new is not None:
        if hits:
            request.num_computed_tokens = len(hits) * kv.block_size
        request.num_computed_tokens += num_new
    kv.pool.check_invariants()
    return new


def refs(kv: KVCacheManager) -> list[int]:
    return [b.ref_cnt for b in kv.pool.blocks]


def stored(kv: KVCacheManager) -> list[int]:
    """Hashes stored by the events since the last call, flattened."""
    return [h for e in kv.pool.take_events() if isinstance(e, BlockStored) for h in e.block_hashes]


def test_cdiv_and_blocks_needed() -> None:
    assert [cdiv(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert make_kv().blocks_needed(9) == 3


@pytest.mark.parametrize("block_size", [0, -4])
def test_block_size_must_be_positive(block_size: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(NUM_BLOCKS, block_size)


# -- allocation --------------------------------------------------------------------------------


def test_prefill_allocates_covering_blocks_and_caches_full_ones() -> None:
    kv = make_kv()
    req = make_request("a", 6)
    assert kv.get_computed_blocks(req) == []
    new = run_step(kv, req, 6)
    assert new is not None
    assert ids(new) == [0, 1]
    assert kv.block_ids(req.request_id) == [0, 1]
    assert kv.num_free_blocks == NUM_BLOCKS - 2
    h = hash_block_tokens(req.prompt_token_ids, BLOCK_SIZE)
    assert req.block_hashes == h
    assert stored(kv) == h  # block 0 only: block 1 holds 2 of 4 tokens
    assert [b.block_hash for b in kv.pool.blocks[:2]] == [h[0], None]


def test_decode_steps_fill_the_last_block_then_take_a_new_one() -> None:
    kv = make_kv()
    req = make_request("a", 6)
    run_step(kv, req, 6)
    stored(kv)

    req.output_token_ids.append(50)  # 7 tokens known
    assert run_step(kv, req, 1) == []
    assert stored(kv) == []

    req.output_token_ids.append(51)  # 8 tokens: block 1 fills this step
    assert run_step(kv, req, 1) == []
    assert stored(kv) == [hash_block_tokens(req.all_token_ids, BLOCK_SIZE)[1]]

    req.output_token_ids.append(52)  # 9 tokens: a third block
    new = run_step(kv, req, 1)
    assert new is not None
    assert ids(new) == [2]
    assert kv.block_ids(req.request_id) == [0, 1, 2]
    assert req.block_hashes == hash_block_tokens(req.all_token_ids, BLOCK_SIZE)


def test_chunk_caches_only_blocks_computed_by_the_end_of_the_step() -> None:
    kv = make_kv()
    req = make_request("a", 10)
    run_step(kv, req, 5)  # positions 0..4: block 0 full, block 1 holds one computed token
    assert kv.block_ids(req.request_id) == [0, 1]
    h = hash_block_tokens(req.prompt_token_ids, BLOCK_SIZE)
    assert stored(kv) == h[:1]

    run_step(kv, req, 5)  # positions 5..9
    assert kv.block_ids(req.request_id) == [0, 1, 2]
    assert stored(kv) == h[1:2]
    assert kv.pool.num_cached_blocks == 2


def test_not_enough_blocks_returns_none_and_changes_nothing() -> None:
    kv = make_kv(3)
    req = make_request("a", 13)  # needs 4 blocks
    assert kv.allocate_slots(req, 13) is None
    assert (kv.num_free_blocks, kv.pool.num_cached_blocks) == (3, 0)
    assert kv.block_ids(req.request_id) == []
    assert kv.pool.take_events() == []
    kv.pool.check_invariants()

    # A running request that cannot grow keeps what it has.
    small = make_request("b", 12)
    run_step(kv, small, 12)
    events = kv.pool.take_events()
    small.output_token_ids.append(50)
    assert kv.allocate_slots(small, 1) is None
    assert kv.block_ids(small.request_id) == [0, 1, 2]
    assert refs(kv) == [1, 1, 1]
    assert kv.pool.take_events() == []
    assert len(events) == 1


def test_free_returns_every_block_and_is_idempotent() -> None:
    kv = make_kv()
    a, b = make_request("a", 9), make_request("b", 5)
    run_step(kv, a, 9)
    run_step(kv, b, 5)
    assert kv.num_free_blocks == NUM_BLOCKS - 5
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == NUM_BLOCKS
    assert kv.block_ids(a.request_id) == []
    kv.free(a)  # unknown request: nothing to do
    assert kv.num_free_blocks == NUM_BLOCKS
    kv.pool.check_invariants()


def test_free_releases_tail_first_so_the_prefix_survives_longest() -> None:
    kv = make_kv(3)
    req = make_request("a", 12)
    run_step(kv, req, 12)
    h = hash_block_tokens(req.prompt_token_ids, BLOCK_SIZE)
    kv.free(req)
    kv.pool.take_events()

    other = make_request("b", 4)
    run_step(kv, other, 4)
    assert kv.block_ids(other.request_id) == [2]
    assert kv.pool.take_events()[0] == BlockRemoved((h[2],))
    assert [kv.pool.get_cached_block(x) is not None for x in h] == [True, True, False]


# -- prefix cache ------------------------------------------------------------------------------


def _computed_and_freed(kv: KVCacheManager, tokens: list[int]) -> list[int]:
    """Compute `tokens` as request "src", free it; returns its block hashes."""
    src = make_request("src", tokens)
    run_step(kv, src, len(tokens))
    kv.free(src)
    kv.pool.take_events()
    return src.block_hashes


def test_prefix_hit_always_leaves_one_token_to_compute() -> None:
    kv = make_kv()
    tokens = list(range(100, 108))  # exactly 2 full blocks
    _computed_and_freed(kv, tokens)

    same = make_request("same", tokens)
    assert ids(kv.get_computed_blocks(same)) == [0]  # not [0, 1]: the model needs a token

    longer = make_request("longer", [*tokens, 7])
    assert ids(kv.get_computed_blocks(longer)) == [0, 1]

    assert ids(kv.get_computed_blocks(make_request("short", tokens[:5]))) == [0]
    assert kv.get_computed_blocks(make_request("tiny", tokens[:4])) == []


def test_prefix_hit_stops_at_the_first_mismatching_block() -> None:
    kv = make_kv()
    tokens = list(range(100, 112))
    _computed_and_freed(kv, tokens)

    second_differs = make_request("x", [*tokens[:4], 0, 0, 0, 0, *tokens[8:], 1])
    assert ids(kv.get_computed_blocks(second_differs)) == [0]

    first_differs = make_request("y", [0, *tokens[1:], 1])
    assert kv.get_computed_blocks(first_differs) == []


def test_a_block_whose_prefix_was_evicted_is_not_a_hit() -> None:
    kv = make_kv(4)
    tokens = list(range(100, 112))
    h = _computed_and_freed(kv, tokens)  # free queue: 3 (plain), 2, 1, 0 (cached)
    b1, b2 = (kv.pool.get_cached_block(x) for x in h[1:])
    kv.pool.touch([b1, b2])  # used again, so block 0 becomes the least recently used
    kv.pool.free([b2, b1])
    run_step(kv, make_request("other", 5), 5)  # takes block 3, then evicts block 0
    assert kv.pool.take_events()[0] == BlockRemoved((h[0],))
    assert kv.pool.get_cached_block(h[1]) is b1

    # Blocks 1 and 2 are still cached, but without block 0 they match nothing.
    assert kv.get_computed_blocks(make_request("again", [*tokens, 1])) == []


def test_a_freed_request_allocated_again_republishes_its_blocks() -> None:
    kv = make_kv(2)
    req = make_request("a", 8)
    run_step(kv, req, 8)
    kv.free(req)
    kv.pool.allocate(2)  # evicts both blocks
    kv.pool.free(kv.pool.blocks)
    kv.pool.take_events()

    req.num_computed_tokens = 0
    assert kv.get_computed_blocks(req) == []
    run_step(kv, req, 8)
    assert stored(kv) == req.block_hashes


def test_hits_are_touched_and_counted_as_cached() -> None:
    kv = make_kv()
    tokens = list(range(100, 110))
    _computed_and_freed(kv, tokens)  # blocks 0, 1 cached; block 2 plain
    assert kv.num_free_blocks == NUM_BLOCKS

    req = make_request("b", [*tokens, 1, 2])  # 12 tokens: 2 hit blocks + 4 to compute
    hits = kv.get_computed_blocks(req)
    assert ids(hits) == [0, 1]
    new = run_step(kv, req, 4, hits)
    assert new is not None
    assert ids(new) == [2]  # the plain freed block comes back first
    assert kv.block_ids(req.request_id) == [0, 1, 2]
    assert refs(kv)[:3] == [1, 1, 1]
    assert kv.num_free_blocks == NUM_BLOCKS - 3
    # Only the newly filled block is published; the hits are not stored again.
    assert stored(kv) == [req.block_hashes[2]]


def test_hits_shared_with_a_running_request_take_a_second_reference() -> None:
    kv = make_kv()
    tokens = list(range(100, 109))
    a = make_request("a", tokens)
    run_step(kv, a, 9)  # blocks 0, 1 cached while a still holds them

    b = make_request("b", tokens)
    hits = kv.get_computed_blocks(b)
    assert ids(hits) == [0, 1]
    run_step(kv, b, 1, hits)
    assert kv.block_ids(b.request_id) == [0, 1, 3]
    assert refs(kv)[:4] == [2, 2, 1, 1]

    kv.free(a)
    assert refs(kv)[:4] == [1, 1, 0, 1]
    kv.free(b)
    assert kv.num_free_blocks == NUM_BLOCKS
    kv.pool.check_invariants()


def test_free_cached_hits_count_against_free_capacity() -> None:
    kv = make_kv(4)
    tokens = list(range(100, 112))
    _computed_and_freed(kv, tokens)  # 4 free blocks, 3 of them cached
    assert (kv.num_free_blocks, kv.pool.num_cached_blocks) == (4, 3)

    # 17 tokens: 3 hits (all free) + 2 new blocks, but only 1 block is free besides the hits.
    req = make_request("b", [*tokens, 1, 2, 3, 4, 5])
    hits = kv.get_computed_blocks(req)
    assert ids(hits) == [0, 1, 2]
    assert kv.allocate_slots(req, 5, hits) is None
    assert (kv.num_free_blocks, kv.pool.num_cached_blocks) == (4, 3)
    assert refs(kv) == [0, 0, 0, 0]
    assert kv.block_ids(req.request_id) == []
    assert kv.pool.take_events() == []
    kv.pool.check_invariants()

    # 13 tokens: 3 hits + 1 new block fits exactly.
    fits = make_request("c", [*tokens, 1])
    hits = kv.get_computed_blocks(fits)
    new = run_step(kv, fits, 1, hits)
    assert new is not None
    assert ids(new) == [3]
    assert (kv.num_free_blocks, refs(kv)) == (0, [1, 1, 1, 1])


def test_allocating_new_blocks_evicts_cached_ones_lru_and_reports_it() -> None:
    kv = make_kv(4)
    h = _computed_and_freed(kv, list(range(100, 116)))  # all 4 blocks cached and free
    assert kv.pool.num_cached_blocks == 4

    req = make_request("b", 6)
    run_step(kv, req, 6)
    assert kv.block_ids(req.request_id) == [3, 2]  # tail of the old sequence goes first
    events = kv.pool.take_events()
    assert events[0] == BlockRemoved((h[3], h[2]))
    assert events[1] == BlockStored((req.block_hashes[0],))
    assert kv.pool.get_cached_block(h[0]) is not None


def test_free_returns_the_pool_to_its_initial_free_count_with_shared_prefixes() -> None:
    kv = make_kv()
    shared = list(range(100, 108))
    reqs = [make_request(f"r{i}", [*shared, i, i, i]) for i in range(3)]
    for req in reqs:
        hits = kv.get_computed_blocks(req)
        run_step(kv, req, req.num_tokens - len(hits) * BLOCK_SIZE, hits)
    assert [kv.block_ids(r.request_id) for r in reqs] == [[0, 1, 2], [0, 1, 3], [0, 1, 4]]
    assert [r.num_computed_tokens for r in reqs] == [11, 11, 11]
    for req in reqs:
        kv.free(req)
        kv.pool.check_invariants()
    assert kv.num_free_blocks == NUM_BLOCKS
    assert kv.pool.num_cached_blocks == 2


def test_hashes_chain_across_prompt_and_output() -> None:
    kv = make_kv()
    req = make_request("a", 6)
    run_step(kv, req, 6)
    for token in (50, 51, 52, 53):
        req.output_token_ids.append(token)
        run_step(kv, req, 1)
    assert req.num_tokens == 10
    assert req.block_hashes == hash_block_tokens(req.all_token_ids, BLOCK_SIZE)
    assert len(req.block_hashes) == 2
    # A new request whose prompt is that whole sequence hits both blocks.
    kv.free(req)
    follow_up = make_request("b", req.all_token_ids)
    assert ids(kv.get_computed_blocks(follow_up)) == [0, 1]


def test_recompute_after_free_hits_its_own_blocks() -> None:
    """What preemption does: free, then look the same request up again."""
    kv = make_kv()
    req = make_request("a", 10)
    run_step(kv, req, 10)
    kv.free(req)
    req.num_computed_tokens = 0
    hits = kv.get_computed_blocks(req)
    assert ids(hits) == [0, 1]
    run_step(kv, req, 2, hits)
    assert kv.block_ids(req.request_id) == [0, 1, 2]
    assert req.num_computed_tokens == 10


def test_caching_disabled_never_hits_or_publishes() -> None:
    kv = make_kv(enable_caching=False)
    tokens = list(range(100, 109))
    a = make_request("a", tokens)
    run_step(kv, a, 9)
    kv.free(a)
    assert kv.pool.num_cached_blocks == 0
    assert kv.pool.take_events() == []
    assert kv.get_computed_blocks(make_request("b", tokens)) == []
