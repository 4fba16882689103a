"""The cluster KV index: events, gaps, truncation, restarts, snapshots, worker removal and
garbage collection, checked against a brute-force model of each worker's cache."""

from __future__ import annotations

import random

import pytest

from kvferry.services.router.kv_index import (
    EventKind,
    IndexEvent,
    KVIndex,
    SyncState,
    WorkerUpdate,
)
from kvferry.services.router.workers import WorkerId

A, B, C = WorkerId("a"), WorkerId("b"), WorkerId("c")


def stored(seq: int, *hashes: int) -> IndexEvent:
    return IndexEvent(seq, EventKind.STORED, hashes)


def removed(seq: int, *hashes: int) -> IndexEvent:
    return IndexEvent(seq, EventKind.REMOVED, hashes)


def synced(
    index: KVIndex, worker: WorkerId, hashes: tuple[int, ...] = (), *, inc: int = 1, seq: int = 0
) -> None:
    assert index.apply(worker, WorkerUpdate(inc, seq, snapshot=hashes)) is SyncState.IN_SYNC


def hits(index: KVIndex, hashes: list[int]) -> dict[WorkerId, int]:
    """The galloping lookup, checked against the block-by-block scan on the way."""
    fast = dict(index.prefix_hits(hashes).items())
    assert fast == dict(index.exact_prefix_hits(hashes).items())
    return fast


def test_events_in_order_build_the_index() -> None:
    index = KVIndex()
    synced(index, A)
    synced(index, B)
    assert (
        index.apply(A, WorkerUpdate(1, 2, [stored(1, 10, 11, 12), removed(2, 12)]))
        is SyncState.IN_SYNC
    )
    index.apply(B, WorkerUpdate(1, 1, [stored(1, 10, 20)]))
    assert hits(index, [10, 11, 12]) == {A: 2, B: 1}
    assert hits(index, [10, 20]) == {A: 1, B: 2}
    assert hits(index, [99, 10]) == {}  # only LEADING blocks count
    assert index.prefix_hits([10, 11]).get(C) == 0
    assert index.held(A) == {10, 11} and index.held(B) == {10, 20}
    assert index.num_entries == 4 and index.num_hashes == 3


def test_a_new_worker_is_not_trusted_before_its_snapshot() -> None:
    index = KVIndex()
    state = index.apply(A, WorkerUpdate(1, 1, [stored(1, 10)]))
    assert state is SyncState.NEEDS_SNAPSHOT and index.held(A) == set()
    synced(index, A, (10, 11), seq=1)
    assert index.held(A) == {10, 11}
    sync = index.sync_state(A)
    assert sync is not None and sync.applied_seq == 1 and sync.resyncs == 1


def test_a_gap_keeps_stale_entries_until_the_snapshot() -> None:
    index = KVIndex()
    synced(index, A, (10,))
    index.apply(A, WorkerUpdate(1, 1, [stored(1, 11)]))
    # events 2 (removed 10) and 3 were lost; 4 arrives
    state = index.apply(A, WorkerUpdate(1, 4, [stored(4, 40)]))
    assert state is SyncState.NEEDS_SNAPSHOT
    sync = index.sync_state(A)
    assert sync is not None and "2..3 were not received" in sync.reason
    assert index.held(A) == {10, 11}  # stale (10 is gone on the worker): a miss at worst
    index.apply(A, WorkerUpdate(1, 5, [stored(5, 50)]))  # ignored while waiting
    assert index.held(A) == {10, 11}
    synced(index, A, (11, 30, 40, 50), seq=5)
    assert index.held(A) == {11, 30, 40, 50}
    index.apply(A, WorkerUpdate(1, 6, [stored(6, 60)]))
    assert index.held(A) == {11, 30, 40, 50, 60}


def test_missing_tail_events_are_a_gap_too() -> None:
    index = KVIndex()
    synced(index, A)
    assert index.apply(A, WorkerUpdate(1, 3, [stored(1, 10)])) is SyncState.NEEDS_SNAPSHOT


def test_overlapping_answers_apply_each_event_once() -> None:
    index = KVIndex()
    synced(index, A)
    index.apply(A, WorkerUpdate(1, 2, [stored(1, 10), removed(2, 10)]))
    index.apply(A, WorkerUpdate(1, 3, [stored(1, 10), removed(2, 10), stored(3, 11)]))
    assert index.held(A) == {11}


def test_truncated_history_asks_for_a_snapshot() -> None:
    index = KVIndex()
    synced(index, A, (10,))
    assert (
        index.apply(A, WorkerUpdate(1, 900, [stored(800, 1)], truncated=True))
        is SyncState.NEEDS_SNAPSHOT
    )
    assert index.held(A) == {10}


def test_a_restart_drops_the_old_entries_at_once() -> None:
    index = KVIndex()
    synced(index, A, (10, 11))
    synced(index, B, (10,))
    state = index.apply(A, WorkerUpdate(2, 1, [stored(1, 77)]))  # incarnation 2, seq restarted
    assert state is SyncState.NEEDS_SNAPSHOT
    assert index.held(A) == set() and hits(index, [10, 11]) == {B: 1}
    synced(index, A, (77,), inc=2, seq=1)
    assert index.held(A) == {77}
    index.add_worker(A, 3)  # the registry saw a newer incarnation first: same effect
    assert index.held(A) == set()


def test_cleared_drops_everything_then_goes_on() -> None:
    index = KVIndex()
    synced(index, A, (10, 11))
    cleared = IndexEvent(1, EventKind.CLEARED)
    index.apply(A, WorkerUpdate(1, 2, [cleared, stored(2, 12)]))
    assert index.held(A) == {12}


def test_removed_workers_vanish_and_their_slots_are_reused_clean() -> None:
    index = KVIndex(gc_min_dead_entries=1)
    synced(index, A, (10, 11))
    synced(index, B, (10,))
    assert index.remove_worker(A)
    assert not index.remove_worker(A)
    assert hits(index, [10, 11]) == {B: 1}
    assert index.dead_entries == 0  # swept (the threshold is 1 entry)
    assert index.num_hashes == 1
    synced(index, C, (20,))  # takes A's old slot
    assert index.held(C) == {20} and hits(index, [10, 11]) == {B: 1}


def test_prefix_hits_mapping_and_top() -> None:
    index = KVIndex()
    for w, n in ((A, 3), (B, 1), (C, 2)):
        synced(index, w, tuple(range(100, 100 + n)))
    answer = index.prefix_hits([100, 101, 102, 103])
    assert dict(answer) == {A: 3, B: 1, C: 2}
    assert len(answer) == 3 and answer.max_blocks == 3 and answer[C] == 2
    with pytest.raises(KeyError):
        answer[WorkerId("nobody")]
    assert answer.top(2, lambda w: True) == [A, C]
    assert answer.top(5, lambda w: w != A) == [C, B]
    assert answer.counts([C, WorkerId("nobody"), A, B]) == [2, 0, 3, 1]
    assert index.prefix_hits([999]).counts([A]) == [0]
    assert len(index.prefix_hits([999])) == 0


class _Worker:
    """A worker's real prefix cache and its numbered event history (the truth)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cache: set[int] = set()
        self.log: list[IndexEvent] = []
        self.incarnation = 1

    def step(self) -> None:
        seq = len(self.log) + 1
        roll = self.rng.random()
        if roll < 0.6:
            # a chain of blocks, often sharing a prefix with what others hold
            start = self.rng.randrange(8) * 10
            new = [h for h in range(start, start + self.rng.randrange(1, 6)) if h not in self.cache]
            self.cache.update(new)
            self.log.append(IndexEvent(seq, EventKind.STORED, tuple(new)))
        elif roll < 0.97 and self.cache:
            gone = self.rng.sample(sorted(self.cache), self.rng.randrange(1, len(self.cache) + 1))
            self.cache.difference_update(gone)
            self.log.append(IndexEvent(seq, EventKind.REMOVED, tuple(gone)))
        else:
            self.cache.clear()
            self.log.append(IndexEvent(seq, EventKind.CLEARED))

    def restart(self) -> None:
        self.cache = set()
        self.log = []
        self.incarnation += 1

    def answer(self, since: int, *, lose: float, snapshot: bool) -> WorkerUpdate:
        events = [e for e in self.log[since:] if self.rng.random() >= lose]
        return WorkerUpdate(
            self.incarnation,
            len(self.log),
            events,
            truncated=self.rng.random() < 0.05,
            snapshot=tuple(self.cache) if snapshot else None,
        )


@pytest.mark.parametrize("seed", range(40))
def test_property_after_resync_the_index_claims_exactly_what_workers_hold(seed: int) -> None:
    """Up to 3 holders of a hash are packed in one int, more are a bitmask: 2-7 workers
    sharing hashes exercise both and every transition between them."""
    rng = random.Random(seed)
    index = KVIndex(gc_min_dead_entries=rng.choice([1, 8, 10**9]))
    truth = {WorkerId(f"w{i}"): _Worker(rng) for i in range(2 + seed % 6)}
    for _ in range(150):
        wid = rng.choice(list(truth))
        w = truth[wid]
        for _ in range(rng.randrange(3)):
            w.step()
        if rng.random() < 0.03:
            w.restart()
        if rng.random() < 0.02:
            index.remove_worker(wid)
        sync = index.sync_state(wid)
        want_snapshot = sync is None or sync.state is SyncState.NEEDS_SNAPSHOT
        since = sync.applied_seq if sync is not None and sync.incarnation == w.incarnation else 0
        state = index.apply(
            wid, w.answer(since, lose=rng.choice([0.0, 0.0, 0.2]), snapshot=want_snapshot)
        )
        if state is SyncState.IN_SYNC:
            # in sync: exact, never a block the worker does not hold
            assert index.held(wid) == w.cache
        else:
            # the poller asks again at once, with a snapshot
            index.apply(wid, w.answer(0, lose=0.0, snapshot=True))
            assert index.held(wid) == w.cache
        for other, ow in truth.items():
            s = index.sync_state(other)
            if s is not None and s.incarnation == ow.incarnation:
                assert index.held(other) <= ow.cache or s.state is SyncState.NEEDS_SNAPSHOT
    # every query agrees with a brute-force prefix count over the in-sync workers
    for wid, w in truth.items():
        index.apply(wid, w.answer(0, lose=0.0, snapshot=True))
    for start in range(0, 80, 10):
        chain = list(range(start, start + 6))
        expected = {}
        for wid, w in truth.items():
            n = 0
            while n < len(chain) and chain[n] in w.cache:
                n += 1
            if n:
                expected[wid] = n
        assert dict(index.exact_prefix_hits(chain)) == expected
        # these caches have holes (random evictions): the galloping lookup may only credit
        # more, and never a worker that lacks the last block it is credited with
        fast = index.prefix_hits(chain)
        for wid, n in fast.items():
            assert n >= expected.get(wid, 0) and chain[n - 1] in truth[wid].cache
        assert set(expected) <= set(fast)
    index.collect()
    assert index.dead_entries == 0
    assert index.num_entries == sum(len(w.cache) for w in truth.values())


@pytest.mark.parametrize("seed", range(30))
def test_galloping_is_exact_on_prefix_closed_caches(seed: int) -> None:
    """Each worker caches a prefix of each chain (what an LRU prefix cache keeps): the
    galloping lookup equals a brute-force count, however long the chains."""
    rng = random.Random(seed)
    index = KVIndex()
    chains = [[rng.getrandbits(64) for _ in range(rng.randrange(1, 300))] for _ in range(4)]
    shared = chains[0][: rng.randrange(1, len(chains[0]) + 1)]
    chains[1] = shared + chains[1]  # a common prefix, then diverging
    truth: dict[WorkerId, set[int]] = {}
    for i in range(rng.randrange(1, 12)):
        wid = WorkerId(f"w{i}")
        held: set[int] = set()
        for chain in chains:
            if rng.random() < 0.6:
                held.update(chain[: rng.randrange(len(chain) + 1)])
        truth[wid] = held
        synced(index, wid, tuple(held))
    for chain in chains:
        for cut in (len(chain), rng.randrange(1, len(chain) + 1)):
            query = chain[:cut] + [rng.getrandbits(64) for _ in range(rng.randrange(3))]
            expected = {}
            for wid, held in truth.items():
                n = 0
                while n < len(query) and query[n] in held:
                    n += 1
                if n:
                    expected[wid] = n
            assert hits(index, query) == expected


def test_galloping_probes_few_blocks() -> None:
    index = KVIndex()
    chain = list(range(1, 1025))
    synced(index, A, tuple(chain))
    synced(index, B, tuple(chain[:700]))
    probes = 0
    real_get = index._holders.get

    class Counting(dict[int, int]):
        def get(self, key: int, default: object = None) -> object:  # type: ignore[override]
            nonlocal probes
            probes += 1
            return real_get(key, default)

    index._holders = Counting(index._holders)
    assert hits_fast(index, chain) == {A: 1024, B: 700}
    assert probes < 60  # two changes of holders over 1,024 blocks: ~2 x 2 x log2(1024)


def hits_fast(index: KVIndex, hashes: list[int]) -> dict[WorkerId, int]:
    return dict(index.prefix_hits(hashes).items())


def _reference_gallop(index: KVIndex, hashes: list[int]) -> list[tuple[int, int]]:
    """The galloping lookup written plainly: every probe decodes its holders into a mask
    (`prefix_hits` skips that when a probe finds the holders value it started from)."""
    n = len(hashes)
    levels: list[tuple[int, int]] = []
    if not n:
        return levels

    def mask(i: int) -> int:
        v = index._holders.get(hashes[i])
        return index._mask(v) if v is not None else 0

    cur, good = mask(0) & index._live, 0
    while cur:
        step, bad = 1, n
        while good + step < n:
            if mask(good + step) & cur != cur:
                bad = good + step
                break
            good += step
            step *= 2
        else:
            bad = n
            if good < n - 1:
                if mask(n - 1) & cur == cur:
                    good = n - 1
                else:
                    bad = n - 1
        while bad - good > 1:
            mid = (good + bad) // 2
            if mask(mid) & cur == cur:
                good = mid
            else:
                bad = mid
        if bad >= n:
            levels.append((n, cur))
            break
        levels.append((bad, cur))
        cur, good = mask(bad) & cur, bad
    return levels


@pytest.mark.parametrize("seed", range(40))
def test_galloping_equals_the_plain_gallop_with_holes_and_many_holders(seed: int) -> None:
    """Caches that are NOT prefix-closed (holes, withdrawn blocks) and blocks with 1 to
    many holders (packed and bitmask holders values, retired slots): the lookup's answer
    is exactly the plain gallop's, probe for probe."""
    rng = random.Random(seed)
    index = KVIndex(gc_min_dead_entries=10**9)  # keep retired slots' bits in the dict
    chain = [rng.getrandbits(64) for _ in range(rng.randrange(1, 200))]
    workers = [WorkerId(f"w{i}") for i in range(rng.randrange(1, 9))]
    for wid in workers:
        held = chain[: rng.randrange(len(chain) + 1)]
        holes = rng.sample(range(len(chain)), rng.randrange(min(4, len(chain)) + 1))
        held = [h for i, h in enumerate(held) if i not in holes]
        held += [chain[i] for i in rng.sample(range(len(chain)), rng.randrange(3))]
        synced(index, wid, tuple(held))
    if rng.random() < 0.5:  # a retired slot's bits stay in the dict, masked out of queries
        index.remove_worker(rng.choice(workers))
    for _ in range(5):
        query = chain[: rng.randrange(1, len(chain) + 1)]
        assert index.prefix_hits(query)._levels == _reference_gallop(index, query)
