"""Scheduler: continuous batching, chunked prefill, prefix hits, preemption, finishing.

Driven as the engine drives it (`World.step`: schedule, run the fake model, update) on a
pool of block size 4. The fake model reads each request's context back from its block
table, so a wrong hit or a shared block fails loudly, and its tokens depend only on the
context, so outputs are comparable with `reference_output` (the request run alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from kvferry.finish import FinishReason
from kvferry.services.engine.block_pool import BlockRemoved, BlockStored, KVEvent
from kvferry.services.engine.request import RequestId, RequestStatus
from kvferry.services.engine.scheduler import SchedulerConfig, SchedulerOutput

from .factories import (
    EOS,
    NUM_BLOCKS,
    World,
    make_request,
    prompt_ids,
    reference_output,
    scheduled_tokens,
)


def summary(out: SchedulerOutput) -> list[tuple[str, int, int, list[int], bool]]:
    """(request id, tokens, start position, block ids, sample) per scheduled request."""
    return [
        (item.request_id, len(item.token_ids), item.start_position, item.block_ids, item.sample)
        for item in out.scheduled
    ]


def waiting_ids(world: World) -> list[str]:
    return [r.request_id for r in world.scheduler.waiting]


def running_ids(world: World) -> list[str]:
    return [r.request_id for r in world.scheduler.running]


def assert_drained(world: World) -> None:
    assert world.scheduler.num_unfinished == 0
    assert not world.scheduler.waiting
    assert not world.scheduler.running
    assert world.kv.num_free_blocks == world.pool.num_blocks
    world.pool.check_invariants()


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
        (
            {"enable_chunked_prefill": False, "max_num_batched_tokens": 32, "max_model_len": 64},
            "chunked prefill",
        ),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**kwargs)


def test_config_without_chunking_accepts_a_budget_of_max_model_len() -> None:
    config = SchedulerConfig(
        enable_chunked_prefill=False, max_num_batched_tokens=64, max_model_len=64
    )
    assert config.max_num_batched_tokens == 64


# -- admission and batching --------------------------------------------------------------------


def test_first_step_prefills_in_arrival_order_then_decodes() -> None:
    world = World()
    a = world.add("a", 6)
    world.add("b", 5)

    out = world.step()
    assert summary(out) == [("a", 6, 0, [0, 1], True), ("b", 5, 0, [2, 3], True)]
    assert out.num_batched_tokens == 11
    assert out.scheduled[0].token_ids == a.prompt_token_ids
    assert out.scheduled[0].params is a.params
    assert (out.preempted_ids, out.finished_ids) == ([], [])
    assert running_ids(world) == ["a", "b"]
    assert a.status is RequestStatus.RUNNING
    assert (a.num_computed_tokens, a.num_tokens) == (6, 7)

    out = world.step()
    assert summary(out) == [("a", 1, 6, [0, 1], True), ("b", 1, 5, [2, 3], True)]
    assert out.scheduled[0].token_ids == a.output_token_ids[:1]
    assert out.num_batched_tokens == 2


def test_empty_scheduler_returns_an_empty_output() -> None:
    world = World()
    out = world.step()
    assert out.is_empty
    assert (out.num_batched_tokens, out.preempted_ids, out.finished_ids) == (0, [], [])


def test_max_num_seqs_caps_the_running_set() -> None:
    world = World(max_num_seqs=2)
    world.add("a", 4, max_tokens=2)
    world.add("b", 4, max_tokens=4)
    world.add("c", 4, max_tokens=1)

    assert list(scheduled_tokens(world.step())) == ["a", "b"]
    assert waiting_ids(world) == ["c"]
    assert list(scheduled_tokens(world.step())) == ["a", "b"]  # a finishes here
    out = world.step()
    assert scheduled_tokens(out) == {"b": 1, "c": 4}
    assert out.finished_ids == ["a"]
    world.run()
    assert_drained(world)


def test_waiting_requests_are_admitted_first_come_first_served() -> None:
    # Only room for one request at a time: 3 blocks, each request needs 2 to 3.
    world = World(3)
    for rid in ("a", "b", "c"):
        world.add(rid, 6, max_tokens=3)
    order = []
    for out in world.run():
        order += [item.request_id for item in out.scheduled if item.start_position == 0]
    assert order == ["a", "b", "c"]
    assert_drained(world)


def test_head_of_line_request_that_does_not_fit_blocks_later_ones() -> None:
    world = World(4)
    world.add("a", 8, max_tokens=2)  # 3 blocks once it decodes
    world.add("big", 12, max_tokens=1)  # 3 blocks
    world.add("small", 1, max_tokens=1)  # would fit, but arrived later
    assert list(scheduled_tokens(world.step())) == ["a"]
    assert waiting_ids(world) == ["big", "small"]
    world.run()
    assert_drained(world)


# -- token budget and chunked prefill ----------------------------------------------------------


def test_long_prompt_is_split_across_steps_and_sampled_on_the_last_chunk() -> None:
    world = World(max_num_batched_tokens=8)
    req = world.add("a", 20, max_tokens=2)

    assert summary(world.step()) == [("a", 8, 0, [0, 1], False)]
    assert (req.num_computed_tokens, req.output_token_ids) == (8, [])
    assert summary(world.step()) == [("a", 8, 8, [0, 1, 2, 3], False)]
    assert summary(world.step()) == [("a", 4, 16, [0, 1, 2, 3, 4], True)]
    assert req.num_output_tokens == 1
    assert summary(world.step()) == [("a", 1, 20, [0, 1, 2, 3, 4, 5], True)]
    assert req.finish_reason is FinishReason.LENGTH
    assert req.output_token_ids == reference_output(req.prompt_token_ids, 2)
    assert_drained(world)


def test_budget_goes_to_running_decodes_first_then_a_new_prompt_chunk() -> None:
    world = World(max_num_batched_tokens=8)
    world.add("a", 3, max_tokens=5)
    world.step()
    world.add("b", 20, max_tokens=1)

    out = world.step()
    assert summary(out) == [("a", 1, 3, [0], True), ("b", 7, 0, [1, 2], False)]
    assert out.num_batched_tokens == 8
    out = world.step()
    assert scheduled_tokens(out) == {"a": 1, "b": 7}
    world.run()
    assert world.outputs() == {
        rid: reference_output(r.prompt_token_ids, r.params.max_tokens)
        for rid, r in world.all.items()
    }
    assert_drained(world)


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget() -> None:
    world = World(max_num_batched_tokens=18, max_model_len=18, enable_chunked_prefill=False)
    world.add("a", 3, max_tokens=3)
    world.add("c", 3, max_tokens=3)
    world.step()
    world.add("b", 17, max_tokens=1)  # 17 tokens do not fit next to two decodes
    assert scheduled_tokens(world.step()) == {"a": 1, "c": 1}
    assert scheduled_tokens(world.step()) == {"a": 1, "c": 1}  # both finish here
    assert scheduled_tokens(world.step()) == {"b": 17}
    world.run()
    assert_drained(world)


# -- prefix cache ------------------------------------------------------------------------------


def test_second_request_with_a_shared_prefix_computes_only_the_rest() -> None:
    world = World()
    shared = prompt_ids("shared", 10)
    first = world.add("first", shared, max_tokens=2)
    world.step()
    second = world.add("second", [*shared, 7, 7], max_tokens=2)

    out = world.step()
    assert summary(out) == [("first", 1, 10, [0, 1, 2], True), ("second", 4, 8, [0, 1, 3], True)]
    assert out.scheduled[1].token_ids == [shared[8], shared[9], 7, 7]
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, 8)
    world.run()
    assert second.output_token_ids == reference_output(second.prompt_token_ids, 2)
    assert_drained(world)


def test_a_request_admitted_in_the_same_step_hits_blocks_published_by_an_earlier_one() -> None:
    world = World()
    shared = prompt_ids("shared", 8)
    world.add("a", [*shared, 1])
    b = world.add("b", [*shared, 2])
    out = world.step()
    assert summary(out) == [("a", 9, 0, [0, 1, 2], True), ("b", 1, 8, [0, 1, 3], True)]
    assert b.num_cached_tokens == 8
    world.run()
    assert_drained(world)


def test_identical_prompts_hit_all_but_the_last_block() -> None:
    world = World()
    prompt = prompt_ids("p", 8)
    world.add("a", prompt, max_tokens=1)
    world.run()
    b = world.add("b", prompt, max_tokens=1)
    assert summary(world.step()) == [("b", 4, 4, [0, 2], True)]
    assert b.num_cached_tokens == 4
    assert b.output_token_ids == reference_output(prompt, 1)


def test_requests_computing_the_same_block_in_one_step_cache_it_once() -> None:
    world = World()
    world.add("a", [5, 6], max_tokens=4)
    world.add("b", [5, 6], max_tokens=4)
    world.step()
    world.pool.take_events()
    world.step()  # both fill their first block with the same 4 tokens in this step
    world.step()
    events = world.pool.take_events()
    assert events == [BlockStored((world.all[RequestId("a")].block_hashes[0],))]
    assert world.pool.num_cached_blocks == 1
    world.run()
    assert world.outputs()["a"] == world.outputs()["b"]
    assert_drained(world)
    assert world.pool.num_cached_blocks == 1


def test_caching_disabled_recomputes_shared_prefixes() -> None:
    world = World(enable_caching=False)
    shared = prompt_ids("shared", 8)
    world.add("a", [*shared, 1], max_tokens=1)
    world.run()
    b = world.add("b", [*shared, 1], max_tokens=1)
    assert scheduled_tokens(world.step()) == {"b": 9}
    assert b.num_cached_tokens == 0
    assert world.pool.take_events() == []


# -- preemption --------------------------------------------------------------------------------


def _preemption_world(num_blocks: int) -> World:
    world = World(num_blocks, max_num_seqs=2)
    world.add("a", 8, max_tokens=8)  # 16 tokens: 4 blocks at most
    world.add("b", 8, max_tokens=8)
    world.add("c", 3, max_tokens=2)
    return world


def test_newest_running_request_is_preempted_and_recomputed_later() -> None:
    world = _preemption_world(6)
    a, b = (world.all[RequestId(rid)] for rid in ("a", "b"))
    for _ in range(5):  # prompts, then decodes at positions 8..11
        world.step()
    assert world.kv.num_free_blocks == 0
    b_hashes = list(b.block_hashes)
    world.pool.take_events()

    out = world.step()  # a needs a 4th block for position 12: b goes
    assert out.preempted_ids == ["b"]
    assert summary(out) == [("a", 1, 12, [0, 1, 4, 5], True)]
    assert (b.status, b.num_computed_tokens, b.num_preemptions) == (RequestStatus.PREEMPTED, 0, 1)
    assert b.num_output_tokens == 5
    assert waiting_ids(world) == ["b", "c"]  # front of the queue, ahead of c
    assert running_ids(world) == ["a"]
    # b's blocks were freed tail first, so only its tail was evicted to make room.
    assert world.pool.take_events() == [BlockRemoved((b_hashes[2],))]
    assert world.kv.block_ids(b.request_id) == []

    # b's two prompt blocks are still cached, but it needs two more: it waits for a.
    assert summary(world.step()) == [("a", 1, 13, [0, 1, 4, 5], True)]
    assert summary(world.step()) == [("a", 1, 14, [0, 1, 4, 5], True)]
    assert a.finish_reason is FinishReason.LENGTH

    out = world.step()
    assert out.finished_ids == ["a"]
    assert summary(out) == [("b", 5, 8, [2, 3, 5, 4], True), ("c", 3, 0, [1], True)]
    assert b.status is RequestStatus.RUNNING
    assert b.num_cached_tokens == 0  # stats count the first scheduling only
    world.run()
    assert_drained(world)


def test_preempted_requests_produce_the_same_tokens_as_with_a_big_pool() -> None:
    small, big = _preemption_world(6), _preemption_world(NUM_BLOCKS)
    small.run()
    big.run()
    assert small.all[RequestId("b")].num_preemptions == 1
    assert big.all[RequestId("b")].num_preemptions == 0
    assert small.outputs() == big.outputs()
    assert small.outputs() == {
        rid: reference_output(r.prompt_token_ids, r.params.max_tokens)
        for rid, r in small.all.items()
    }
    assert_drained(small)


def test_a_request_preempts_itself_when_it_is_the_newest() -> None:
    world = World(3, max_num_seqs=2)
    a = world.add("a", 6, max_tokens=3)  # blocks 0, 1
    b = world.add("b", 3, max_tokens=3)  # block 2; position 4 needs a second block
    world.step()
    world.step()
    out = world.step()  # a decodes in block 1; b finds no block and, being newest, steps aside
    assert out.preempted_ids == ["b"]
    assert summary(out) == [("a", 1, 7, [0, 1], True)]
    assert (b.status, b.num_preemptions, waiting_ids(world)) == (RequestStatus.PREEMPTED, 1, ["b"])
    assert a.finish_reason is FinishReason.LENGTH
    out = world.step()
    assert out.finished_ids == ["a"]
    assert summary(out) == [("b", 1, 4, [2, 1], True)]  # its full block 2 was still cached
    world.run()
    assert world.outputs() == {
        rid: reference_output(r.prompt_token_ids, r.params.max_tokens)
        for rid, r in world.all.items()
    }
    assert_drained(world)


# -- finishing ---------------------------------------------------------------------------------


def test_finish_on_max_tokens_is_length() -> None:
    world = World()
    req = world.add("a", 5, max_tokens=3)
    updates_per_step = []
    while world.scheduler.num_unfinished:
        out = world.scheduler.schedule()
        sampled = world.model.run(out, world.all)
        updates_per_step.append(
            [
                (u.request.request_id, u.new_token_ids, u.finished)
                for u in world.scheduler.update(out, sampled)
            ]
        )
    tokens = reference_output(req.prompt_token_ids, 3)
    assert updates_per_step == [
        [("a", tokens[:1], False)],
        [("a", tokens[1:2], False)],
        [("a", tokens[2:], True)],
    ]
    assert (req.status, req.finish_reason) == (RequestStatus.FINISHED, FinishReason.LENGTH)
    assert req.is_finished
    assert_drained(world)


def test_eos_stops_the_request_and_is_kept_in_the_output() -> None:
    world = World()
    req = world.add("a", 5, max_tokens=10)
    world.step()
    world.step({"a": EOS})
    assert req.finish_reason is FinishReason.STOP
    assert req.output_token_ids == [*reference_output(req.prompt_token_ids, 1), EOS]
    assert_drained(world)


def test_ignore_eos_runs_to_max_tokens() -> None:
    world = World()
    req = world.add("a", 5, max_tokens=3, ignore_eos=True)
    world.step({"a": EOS})
    world.step({"a": EOS})
    assert req.status is RequestStatus.RUNNING
    world.step({"a": EOS})
    assert (req.finish_reason, req.output_token_ids) == (FinishReason.LENGTH, [EOS] * 3)


def test_stop_token_ids_stop_even_with_ignore_eos() -> None:
    world = World()
    req = world.add("a", 5, max_tokens=10, ignore_eos=True, stop_token_ids=(33,))
    world.step({"a": 34})
    assert req.status is RequestStatus.RUNNING
    world.step({"a": 33})
    assert (req.finish_reason, req.output_token_ids) == (FinishReason.STOP, [34, 33])


def test_request_specific_eos_ids_are_honoured() -> None:
    world = World()
    req = world.add("a", 5, eos_token_ids=(40, 41), max_tokens=10)
    world.step({"a": EOS})  # not this request's EOS
    assert req.status is RequestStatus.RUNNING
    world.step({"a": 41})
    assert req.finish_reason is FinishReason.STOP


def test_stop_wins_over_length_on_the_last_token() -> None:
    world = World()
    req = world.add("a", 5, max_tokens=1)
    world.step({"a": EOS})
    assert req.finish_reason is FinishReason.STOP


def test_request_beyond_max_model_len_is_rejected_and_one_that_fits_runs_to_it() -> None:
    world = World(max_model_len=10)
    with pytest.raises(ValueError, match="exceeds max_model_len 10"):
        world.add("too-long", 8, max_tokens=3)
    with pytest.raises(ValueError, match="KV blocks"):
        World(max_model_len=100).add("too-big-for-pool", 40, max_tokens=20)
    req = world.add("a", 8, max_tokens=2)
    world.run()
    assert (req.finish_reason, req.num_tokens, req.num_output_tokens) == (
        FinishReason.LENGTH,
        10,
        2,
    )
    assert_drained(world)


def test_finished_ids_are_reported_once_in_the_next_output() -> None:
    world = World()
    world.add("a", 4, max_tokens=1)
    world.add("b", 4, max_tokens=2)
    first = world.step()  # a finishes in this step's update
    assert first.finished_ids == []
    second = world.step()  # b finishes here
    assert second.finished_ids == ["a"]
    third = world.step()
    assert (third.finished_ids, third.is_empty) == (["b"], True)
    assert world.step().finished_ids == []


# -- abort and ids -----------------------------------------------------------------------------


def test_abort_waiting_and_running_requests() -> None:
    world = World(max_num_seqs=1)
    running = world.add("running", 6, max_tokens=8)
    waiting = world.add("waiting", 6, max_tokens=8)
    world.step()
    assert world.kv.num_free_blocks == NUM_BLOCKS - 2

    world.scheduler.finish_requests(
        [RequestId("waiting"), RequestId("running"), RequestId("unknown")], FinishReason.ABORT
    )
    for req in (running, waiting):
        assert (req.status, req.finish_reason) == (RequestStatus.FINISHED, FinishReason.ABORT)
    world.scheduler.finish_requests([RequestId("running")], FinishReason.ABORT)  # gone: ignored
    assert_drained(world)
    out = world.step()
    assert (out.finished_ids, out.is_empty) == (["waiting", "running"], True)
    assert world.step().finished_ids == []


def test_abort_of_a_preempted_request() -> None:
    world = _preemption_world(6)
    b = world.all[RequestId("b")]
    for _ in range(6):
        world.step()
    assert b.status is RequestStatus.PREEMPTED
    world.scheduler.finish_requests([b.request_id], FinishReason.ABORT)
    assert waiting_ids(world) == ["c"]
    world.run()
    assert_drained(world)


def test_abort_between_schedule_and_update_drops_the_result() -> None:
    world = World()
    a = world.add("a", 6, max_tokens=4)
    b = world.add("b", 6, max_tokens=4)
    world.step()
    out = world.scheduler.schedule()
    sampled = world.model.run(out, world.all)
    world.scheduler.finish_requests([a.request_id], FinishReason.ABORT)
    updates = world.scheduler.update(out, sampled)
    assert [u.request.request_id for u in updates] == ["b"]
    assert (a.num_output_tokens, a.finish_reason) == (1, FinishReason.ABORT)
    assert b.num_output_tokens == 2
    world.run()
    assert_drained(world)


def test_duplicate_request_id_is_rejected_until_the_first_one_finishes() -> None:
    world = World()
    world.add("a", 4, max_tokens=1)
    with pytest.raises(ValueError, match="'a' is already in the engine"):
        world.scheduler.add_request(make_request("a", 4))
    assert world.scheduler.num_unfinished == 1
    world.run()
    world.scheduler.add_request(make_request("a", 4, max_tokens=1))
    assert world.scheduler.num_unfinished == 1


# -- randomized stress -------------------------------------------------------------------------


def apply_events(view: set[int], events: list[KVEvent]) -> None:
    """Replay KV events as a router would, checking each one makes sense."""
    for event in events:
        if isinstance(event, BlockStored):
            assert view.isdisjoint(event.block_hashes), "stored twice"
            view.update(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            assert view.issuperset(event.block_hashes), "removed unknown"
            view.difference_update(event.block_hashes)
        else:
            view.clear()


def cached_hashes(world: World) -> set[int]:
    return {b.block_hash for b in world.pool.blocks if b.block_hash is not None}


@dataclass(frozen=True)
class StressCase:
    seed: int
    enable_caching: bool = True
    enable_chunked_prefill: bool = True
    max_num_batched_tokens: int = 16


STRESS_CASES = [
    *(StressCase(seed) for seed in range(6)),
    StressCase(100, enable_caching=False),
    StressCase(101, enable_chunked_prefill=False, max_num_batched_tokens=40),
    StressCase(102, max_num_batched_tokens=3),
]


@pytest.mark.parametrize("case", STRESS_CASES, ids=lambda c: f"seed{c.seed}")
def test_random_workload_keeps_invariants_and_finishes_everything(case: StressCase) -> None:
    rng = random.Random(case.seed)
    max_model_len, num_blocks = 40, 12  # the longest request needs 10 of the 12 blocks
    world = World(
        num_blocks,
        enable_caching=case.enable_caching,
        max_num_seqs=4,
        max_num_batched_tokens=case.max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=case.enable_chunked_prefill,
    )
    prefixes = [prompt_ids(f"prefix{i}", rng.randint(3, 12)) for i in range(3)]
    aborted: set[str] = set()
    eos_at: dict[str, int] = {}  # request id -> output index where EOS was injected
    arrived_at: dict[str, int] = {}
    num_requests, step = 40, 0
    router_view: set[int] = set()  # what a router rebuilds from the pool's events

    while len(arrived_at) < num_requests or world.scheduler.num_unfinished:
        step += 1
        assert step < 2000, "workload did not drain"
        for _ in range(rng.choice([0, 0, 1, 2]) if len(arrived_at) < num_requests else 0):
            rid = f"r{len(arrived_at)}"
            prompt = prompt_ids(rid, rng.randint(1, 30))
            if rng.random() < 0.5:
                prompt = [*rng.choice(prefixes), *prompt][: rng.randint(1, 30)]
            max_tokens = rng.randint(1, max_model_len - len(prompt))
            world.add(rid, prompt, max_tokens=max_tokens)
            arrived_at[rid] = step
        if world.scheduler.num_unfinished and rng.random() < 0.05:
            victim = rng.choice(sorted(world.scheduler.requests))
            world.scheduler.finish_requests([victim], FinishReason.ABORT)
            aborted.add(victim)
            world.pool.check_invariants()

        running_before = {r.request_id for r in world.scheduler.running}
        oldest = min(world.scheduler.requests.values(), key=lambda r: r.arrival, default=None)
        out = world.scheduler.schedule()
        assert out.num_batched_tokens == sum(len(i.token_ids) for i in out.scheduled)
        assert out.num_batched_tokens <= case.max_num_batched_tokens
        assert len(out.scheduled) <= 4
        assert not (world.scheduler.num_unfinished and out.is_empty), "no progress"
        sampled = world.model.run(out, world.all)
        for rid in sampled:
            if rid not in eos_at and rng.random() < 0.02:
                eos_at[rid] = world.all[rid].num_output_tokens
                sampled[rid] = EOS
        world.scheduler.update(out, sampled)
        world.pool.check_invariants()
        assert len(world.scheduler.running) <= 4
        # Every reference is held by a live request: nothing leaks, nothing is shared wrongly.
        held = sum(len(world.kv.block_ids(r)) for r in world.scheduler.requests)
        assert sum(b.ref_cnt for b in world.pool.blocks) == held
        apply_events(router_view, world.pool.take_events())
        assert router_view == cached_hashes(world)
        if out.preempted_ids:
            # Victims are the newest running requests, and nothing is admitted meanwhile.
            assert set(scheduled_tokens(out)) <= running_before
            newest_scheduled = max(
                (world.all[i.request_id].arrival for i in out.scheduled), default=-1
            )
            assert all(world.all[p].arrival > newest_scheduled for p in out.preempted_ids)
        if oldest is not None:
            # FCFS + preempting the newest: the oldest request never stalls.
            assert oldest.request_id in scheduled_tokens(out), f"step {step}: oldest idle"

    # The workload really exercised preemption (and prefix hits where caching is on).
    assert sum(r.num_preemptions for r in world.all.values()) > 0
    assert (sum(r.num_cached_tokens for r in world.all.values()) > 0) == case.enable_caching
    assert_drained(world)
    for rid, req in world.all.items():
        assert req.is_finished
        if rid in aborted:
            assert req.finish_reason is FinishReason.ABORT
            continue
        want = reference_output(req.prompt_token_ids, req.params.max_tokens)
        if rid in eos_at:
            want = [*want[: eos_at[rid]], EOS]
            assert req.finish_reason is FinishReason.STOP
        else:
            assert req.finish_reason is FinishReason.LENGTH
        assert req.output_token_ids == want, rid


def test_an_id_reused_before_the_next_step_is_not_reported_finished() -> None:
    """Abort + re-add under the same id (a worker recomputing a prompt) between steps: the
    next step must not tell the runner the new request finished."""
    world = World()
    world.add("r", 5)
    world.scheduler.finish_requests([RequestId("r")], FinishReason.ABORT)
    world.scheduler.add_request(make_request("r", 5, arrival=1))
    assert RequestId("r") not in world.scheduler.schedule().finished_ids
    world.add("s", 5)
    world.scheduler.finish_requests([RequestId("s")], FinishReason.ABORT)
    assert world.scheduler.schedule().finished_ids == [RequestId("s")]
