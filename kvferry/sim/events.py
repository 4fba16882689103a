"""The discrete-event loop: callbacks run in time order, ties in scheduling order.

Equal-time events run in the order they were scheduled (a counter breaks ties), so a run
is a pure function of its inputs: same trace, configuration and seed, same result.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.processed = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at time `when` (never in the past)."""
        if when < self.now:
            raise ValueError(f"cannot schedule at {when} before now ({self.now})")
        heapq.heappush(self._queue, (when, next(self._seq), fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run(self, until: float = float("inf"), max_events: int = 2_000_000_000) -> None:
        """Process events up to time `until`, at most `max_events` (a bound against a
        model that never settles)."""
        queue = self._queue
        while queue and queue[0][0] <= until:
            if self.processed >= max_events:
                raise RuntimeError(f"simulation exceeded {max_events} events")
            when, _, fn, args = heapq.heappop(queue)
            self.now = when
            self.processed += 1
            fn(*args)

    def __len__(self) -> int:
        return len(self._queue)
