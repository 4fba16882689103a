"""The cluster KV index: which worker's prefix cache holds which block hash. Pure.

Fed by the workers' numbered prefix-cache events (stored / removed / cleared), asked
`prefix_hits(block_hashes)` by placement. Each worker's view is either in sync (every event
up to `applied_seq` applied, in order) or waiting for a snapshot:

- a gap in sequence numbers, or a history the worker already truncated, leaves the old
  entries in place (mostly still right) and asks for a snapshot;
- a new incarnation (the worker restarted: its cache is empty and its numbering starts
  again) drops the old entries at once, then asks for a snapshot;
- a snapshot (every hash the worker holds at `last_seq`) replaces its entries.

Why a stale entry never gives a wrong answer: placement only uses the index to rank
workers. A worker the index wrongly credits with a block recomputes what it lacks (its own
prefix cache decides what it reuses; a decode worker's Admit answers which positions it
still needs), so the cost is a cache miss; and after a snapshot the worker's entries are
exactly what it held at that sequence number.

Memory (the benchmark measures it): one dict entry per distinct hash, key -> holders.
Holders are up to three worker slots packed in one negative int (`~(a | (b+1) << 16 |
(c+1) << 32)`: a shared object for one holder, a two-digit int for two or three; a block
of a disaggregated cluster is typically held by two workers, its prefill and its decode
worker), else a bitmask of slots (a positive int). A retired slot (worker gone, restarted
or resynced) is masked out of queries at once and swept from the dict lazily, when dead
entries reach a quarter of the live ones (so a worker leaving costs O(1) now and amortised
O(1) per entry later).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .workers import WorkerId


class EventKind(enum.Enum):
    STORED = "stored"
    REMOVED = "removed"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class IndexEvent:
    seq: int
    kind: EventKind
    block_hashes: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class WorkerUpdate:
    """One GetStats answer, as the index needs it."""

    incarnation: int
    last_seq: int
    """The worker's newest event seq (the snapshot, if any, is as of this seq)."""
    events: Sequence[IndexEvent] = ()
    """Events after the asked-for seq, oldest first."""
    truncated: bool = False
    """Events after the asked-for seq were already dropped by the worker."""
    snapshot: Sequence[int] | None = None
    """Every hash the worker holds at `last_seq` (None: not asked for)."""


class SyncState(enum.Enum):
    IN_SYNC = "in_sync"
    NEEDS_SNAPSHOT = "needs_snapshot"


@dataclass(slots=True)
class WorkerSync:
    slot: int
    incarnation: int
    applied_seq: int = 0
    state: SyncState = SyncState.NEEDS_SNAPSHOT
    reason: str = "new worker"
    resyncs: int = 0


@dataclass(slots=True)
class _Slots:
    worker: list[WorkerId | None] = field(default_factory=list)
    bit: list[int] = field(default_factory=list)
    """1 << slot (shared objects: no allocation per entry)."""
    single: list[int] = field(default_factory=list)
    """~slot: the encoded value of a hash held by that slot alone."""
    count: list[int] = field(default_factory=list)
    """Entries held per slot."""
    free: list[int] = field(default_factory=list)
    """Collected slots, reused lowest first (a heap)."""
    dead: set[int] = field(default_factory=set)
    """Retired slots whose bits are still in the dict."""


_PACK = 0xFFFF
"""Slots below this pack into a negative holders value (16 bits each, up to three)."""


def _unpack(v: int) -> list[int]:
    """The slots in a holders value."""
    if v >= 0:
        out = []
        while v:
            low = v & -v
            out.append(low.bit_length() - 1)
            v ^= low
        return out
    x = ~v
    out = [x & _PACK]
    x >>= 16
    while x:
        out.append((x & _PACK) - 1)
        x >>= 16
    return out


class KVIndex:
    def __init__(self, *, gc_min_dead_entries: int = 4096) -> None:
        self._holders: dict[int, int] = {}
        self._slots = _Slots()
        self._slot_of: dict[WorkerId, int] = {}
        self._sync: dict[WorkerId, WorkerSync] = {}
        self._live = 0
        """Bitmask of live slots (queries never see retired ones)."""
        self._dead_entries = 0
        self.gc_min_dead_entries = gc_min_dead_entries

    # -- membership ------------------------------------------------------------------------
    def add_worker(self, worker: WorkerId, incarnation: int) -> WorkerSync:
        """Track a worker (idempotent); a new incarnation of a known one drops its entries."""
        sync = self._sync.get(worker)
        if sync is None:
            sync = WorkerSync(self._new_slot(worker), incarnation)
            self._sync[worker] = sync
        elif sync.incarnation != incarnation:
            self._restart(worker, sync, incarnation)
        return sync

    def remove_worker(self, worker: WorkerId) -> bool:
        """Forget a worker (unregistered or expired); its entries vanish from queries now."""
        sync = self._sync.pop(worker, None)
        if sync is None:
            return False
        self._retire(sync.slot)
        del self._slot_of[worker]
        self.maybe_collect()
        return True

    def workers(self) -> list[WorkerId]:
        return list(self._sync)

    def sync_state(self, worker: WorkerId) -> WorkerSync | None:
        return self._sync.get(worker)

    # -- updates ---------------------------------------------------------------------------
    def apply(self, worker: WorkerId, update: WorkerUpdate) -> SyncState:
        """Apply one GetStats answer; returns whether the worker now needs a snapshot."""
        sync = self.add_worker(worker, update.incarnation)
        if update.snapshot is not None:
            self._load_snapshot(worker, sync, update.snapshot)
            sync.applied_seq = update.last_seq
            sync.state = SyncState.IN_SYNC
            sync.reason = ""
            return sync.state  # events in the same answer are at or before last_seq
        if sync.state is SyncState.NEEDS_SNAPSHOT:
            return sync.state
        if update.truncated:
            return self._lost(sync, "the worker's event history was truncated")
        if update.last_seq < sync.applied_seq:
            return self._lost(sync, "the worker's event seq went backwards")
        for event in update.events:
            if event.seq <= sync.applied_seq:
                continue  # already applied (an overlapping answer)
            if event.seq != sync.applied_seq + 1:
                return self._lost(
                    sync, f"events {sync.applied_seq + 1}..{event.seq - 1} were not received"
                )
            self._apply_event(worker, sync, event)
            sync.applied_seq = event.seq
        if sync.applied_seq < update.last_seq:
            return self._lost(
                sync, f"events {sync.applied_seq + 1}..{update.last_seq} were not received"
            )
        return sync.state

    def _apply_event(self, worker: WorkerId, sync: WorkerSync, event: IndexEvent) -> None:
        if event.kind is EventKind.STORED:
            for h in event.block_hashes:
                self._add(sync.slot, h)
        elif event.kind is EventKind.REMOVED:
            for h in event.block_hashes:
                self._remove(sync.slot, h)
        else:  # cleared: a fresh, empty slot (the old one is swept lazily)
            self._retire(sync.slot)
            sync.slot = self._new_slot(worker)

    def _lost(self, sync: WorkerSync, why: str) -> SyncState:
        # NOTE: the old entries stay queryable: they are mostly right, and a wrong one
        # costs a cache miss only (see the module docstring).
        sync.state = SyncState.NEEDS_SNAPSHOT
        sync.reason = why
        return sync.state

    def _restart(self, worker: WorkerId, sync: WorkerSync, incarnation: int) -> None:
        self._retire(sync.slot)
        sync.slot = self._new_slot(worker)
        sync.incarnation = incarnation
        sync.applied_seq = 0
        sync.state = SyncState.NEEDS_SNAPSHOT
        sync.reason = "the worker restarted (new incarnation)"

    def _load_snapshot(self, worker: WorkerId, sync: WorkerSync, hashes: Sequence[int]) -> None:
        self._retire(sync.slot)
        sync.slot = self._new_slot(worker)
        slot = sync.slot
        for h in hashes:
            self._add(slot, h)
        sync.resyncs += 1
        self.maybe_collect()

    # -- slots -----------------------------------------------------------------------------
    def _new_slot(self, worker: WorkerId) -> int:
        s = self._slots
        if s.free:
            slot = heapq.heappop(s.free)
            s.worker[slot] = worker
        else:
            slot = len(s.worker)
            s.worker.append(worker)
            s.bit.append(1 << slot)
            s.single.append(~slot)
            s.count.append(0)
        self._slot_of[worker] = slot
        self._live |= s.bit[slot]
        return slot

    def _retire(self, slot: int) -> None:
        s = self._slots
        self._live &= ~s.bit[slot]
        s.worker[slot] = None
        if s.count[slot]:
            s.dead.add(slot)
            self._dead_entries += s.count[slot]
        else:
            heapq.heappush(s.free, slot)

    def _encode(self, slots: list[int]) -> int:
        """The holders value of a non-empty slot list."""
        s = self._slots
        if len(slots) == 1 and slots[0] < _PACK:
            return s.single[slots[0]]
        if len(slots) <= 3 and max(slots) < _PACK:
            x = slots[0]
            for i, slot in enumerate(slots[1:], start=1):
                x |= (slot + 1) << (16 * i)
            return ~x
        mask = 0
        for slot in slots:
            mask |= s.bit[slot]
        return mask

    def _add(self, slot: int, h: int) -> None:
        s = self._slots
        v = self._holders.get(h)
        if v is None:
            self._holders[h] = s.single[slot] if slot < _PACK else s.bit[slot]
        elif v >= 0:  # a bitmask: stays one
            b = s.bit[slot]
            if v & b:
                return
            self._holders[h] = v | b
        else:
            slots = _unpack(v)
            if slot in slots:
                return
            slots.append(slot)
            self._holders[h] = self._encode(slots)
        s.count[slot] += 1

    def _remove(self, slot: int, h: int) -> None:
        s = self._slots
        v = self._holders.get(h)
        if v is None:
            return
        if v >= 0:
            b = s.bit[slot]
            if not v & b:
                return
            v ^= b
            # NOTE: back to the packed form only when few holders remain (cheap test first)
            if v and (v.bit_count() > 3 or v.bit_length() > _PACK):
                self._holders[h] = v
            elif v:
                self._holders[h] = self._encode(_unpack(v))
            else:
                del self._holders[h]
        else:
            slots = _unpack(v)
            if slot not in slots:
                return
            slots.remove(slot)
            if slots:
                self._holders[h] = self._encode(slots)
            else:
                del self._holders[h]
        s.count[slot] -= 1

    # -- garbage collection ----------------------------------------------------------------
    def maybe_collect(self) -> int:
        """Sweep retired slots out of the dict once they hold a quarter of the entries."""
        live_entries = self.num_entries
        if self._dead_entries < max(self.gc_min_dead_entries, live_entries // 4):
            return 0
        return self.collect()

    def collect(self) -> int:
        """Sweep every retired slot's bits out of the dict now; returns entries dropped."""
        s = self._slots
        if not s.dead:
            return 0
        dead = s.dead
        changes: list[tuple[int, list[int]]] = []
        for h, v in self._holders.items():
            slots = _unpack(v)
            if not dead.isdisjoint(slots):
                changes.append((h, [slot for slot in slots if slot not in dead]))
        for h, kept in changes:
            if kept:
                self._holders[h] = self._encode(kept)
            else:
                del self._holders[h]
        dropped = self._dead_entries
        for slot in s.dead:
            s.count[slot] = 0
            heapq.heappush(s.free, slot)
        s.dead.clear()
        self._dead_entries = 0
        return dropped

    # -- queries ---------------------------------------------------------------------------
    def prefix_hits(self, block_hashes: Sequence[int]) -> PrefixHits:
        """Per worker, how many leading blocks of `block_hashes` it holds.

        NOTE: it probes O(log n) blocks per change of holders, not every block: from a
        block whose holders are known it gallops ahead (+1, +2, +4, ...) while the same
        workers still hold the probed block, then bisects to the first block some of them
        lack. That is exact when each worker's cached blocks of a chain are a prefix of it,
        which an LRU prefix cache keeps (a block is used only with every block before it,
        so a chain's tail is always evicted first). Where a worker lacks a middle block
        and holds a later one (a withdrawn block), the answer may credit it with blocks it
        lacks: a cache miss, like any stale entry. `exact_prefix_hits` scans every block.
        """
        n = len(block_hashes)
        if not n:
            return PrefixHits([], self._slots.worker, self._slot_of, self._slots.bit)
        get = self._holders.get
        mask_of = self._mask
        live = self._live
        levels: list[tuple[int, int]] = []
        v = get(block_hashes[0])
        cur = mask_of(v) & live if v is not None else 0
        # NOTE: `same` is the holders value cur came from: a probe that finds the same
        # value (the usual case: a chain's blocks share their holders) holds all of cur
        # without decoding it into a mask.
        same = v
        good = 0  # every worker in cur holds blocks 0..good
        while cur:
            # gallop: the first probe past `good` where some of cur is missing
            step, bad = 1, n
            while good + step < n:
                v = get(block_hashes[good + step])
                if v is None or (v != same and mask_of(v) & cur != cur):
                    bad = good + step
                    break
                good += step
                step *= 2
            else:
                # from good to the end untested: bisect the tail like any other gap
                bad = n
                if good < n - 1:
                    v = get(block_hashes[n - 1])
                    if v is not None and (v == same or mask_of(v) & cur == cur):
                        good = n - 1
                    else:
                        bad = n - 1
            # bisect (good, bad): the first block some of cur lack
            while bad - good > 1:
                mid = (good + bad) // 2
                v = get(block_hashes[mid])
                if v is not None and (v == same or mask_of(v) & cur == cur):
                    good = mid
                else:
                    bad = mid
            if bad >= n:
                levels.append((n, cur))
                break
            v = get(block_hashes[bad])
            nxt = mask_of(v) & cur if v is not None else 0
            levels.append((bad, cur))
            cur, good, same = nxt, bad, v
        return PrefixHits(levels, self._slots.worker, self._slot_of, self._slots.bit)

    def exact_prefix_hits(self, block_hashes: Sequence[int]) -> PrefixHits:
        """`prefix_hits` by looking up every block (O(n); for tests and tools)."""
        cur = self._live
        levels: list[tuple[int, int]] = []
        depth = 0
        for h in block_hashes:
            v = self._holders.get(h)
            m = self._mask(v) & cur if v is not None else 0
            if m != cur:
                if depth:
                    levels.append((depth, cur))
                cur = m
                if not m:
                    break
            depth += 1
        if cur and depth:
            levels.append((depth, cur))
        return PrefixHits(levels, self._slots.worker, self._slot_of, self._slots.bit)

    def _mask(self, v: int) -> int:
        """The slot bitmask of a holders value."""
        if v >= 0:
            return v
        bit = self._slots.bit
        x = ~v  # packed slots (see _encode)
        m = bit[x & 0xFFFF]
        x >>= 16
        while x:
            m |= bit[(x & 0xFFFF) - 1]
            x >>= 16
        return m

    def holds(self, worker: WorkerId, block_hash: int) -> bool:
        slot = self._slot_of.get(worker)
        v = self._holders.get(block_hash)
        if slot is None or v is None:
            return False
        return slot in _unpack(v)

    def held(self, worker: WorkerId) -> set[int]:
        """Every hash the index credits to `worker` (a full scan: for tests and tools)."""
        slot = self._slot_of.get(worker)
        if slot is None:
            return set()
        return {h for h, v in self._holders.items() if slot in _unpack(v)}

    @property
    def num_hashes(self) -> int:
        """Distinct hashes in the dict (retired slots' not yet swept included)."""
        return len(self._holders)

    @property
    def num_entries(self) -> int:
        """(worker, hash) entries of live workers."""
        s = self._slots
        return sum(s.count[slot] for slot in self._slot_of.values())

    @property
    def dead_entries(self) -> int:
        return self._dead_entries


class PrefixHits(Mapping[WorkerId, int]):
    """The answer of `KVIndex.prefix_hits`, computed lazily from nested slot masks:
    `levels[i] = (depth, mask)` says the workers in mask hold at least `depth` leading
    blocks; depths increase and masks shrink. Absent workers hold 0 (never a key)."""

    __slots__ = ("_bit", "_levels", "_slot_of", "_workers")

    def __init__(
        self,
        levels: list[tuple[int, int]],
        workers: list[WorkerId | None],
        slot_of: dict[WorkerId, int],
        bit: list[int],
    ) -> None:
        self._levels = levels
        self._workers = workers
        self._slot_of = slot_of
        self._bit = bit

    def get(self, worker: WorkerId, default: int = 0) -> int:  # type: ignore[override]
        slot = self._slot_of.get(worker)
        levels = self._levels
        if slot is None or not levels:
            return default
        b = self._bit[slot]
        if not levels[0][1] & b:  # most workers hold nothing of it
            return default
        for depth, mask in reversed(levels):
            if mask & b:
                return depth
        return default

    def __getitem__(self, worker: WorkerId) -> int:
        n = self.get(worker, 0)
        if n == 0:
            raise KeyError(worker)
        return n

    def __iter__(self) -> Iterator[WorkerId]:
        if self._levels:
            yield from self._ids(self._levels[0][1])

    def __len__(self) -> int:
        return self._levels[0][1].bit_count() if self._levels else 0

    @property
    def max_blocks(self) -> int:
        return self._levels[-1][0] if self._levels else 0

    def top(self, k: int, accept: Callable[[WorkerId], bool]) -> list[WorkerId]:
        """Up to k accepted workers holding the most blocks (deepest first). A hint for
        candidate drawing: it looks at no more than 16k + 64 holders."""
        out: list[WorkerId] = []
        budget = 16 * k + 64
        deeper = 0
        workers = self._workers
        for _, level in reversed(self._levels):
            mask = level & ~deeper
            while mask:
                low = mask & -mask
                mask ^= low
                wid = workers[low.bit_length() - 1]
                budget -= 1
                if wid is not None and accept(wid):
                    out.append(wid)
                    if len(out) >= k:
                        return out
                if budget <= 0:
                    return out
            deeper = level
        return out

    def counts(self, workers: Sequence[WorkerId]) -> list[int]:
        """`get` of each worker, in one pass (the decision's hot loop)."""
        levels = self._levels
        if not levels:
            return [0] * len(workers)
        slot_of, first = self._slot_of, levels[0][1]
        deep = levels[1:]
        out = []
        # NOTE: bits are tested by shifting the (hot) level masks, not by reading each
        # worker's `1 << slot` (a cold ~130-byte int per candidate in a 1,000-worker cluster)
        for wid in workers:
            slot = slot_of.get(wid)
            if slot is None or not first >> slot & 1:
                out.append(0)
                continue
            n = levels[0][0]
            for depth, mask in deep:
                if not mask >> slot & 1:
                    break
                n = depth
            out.append(n)
        return out

    def _ids(self, mask: int) -> Iterator[WorkerId]:
        workers = self._workers
        while mask:
            low = mask & -mask
            wid = workers[low.bit_length() - 1]
            if wid is not None:
                yield wid
            mask ^= low
