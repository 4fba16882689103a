"""The simulator's event loop: time order, ties in scheduling order, bounds."""

from __future__ import annotations

import pytest

from kvferry.sim.events import EventLoop


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    loop = EventLoop()
    seen: list[tuple[float, str]] = []

    def note(tag: str) -> None:
        seen.append((loop.now, tag))

    loop.at(2.0, note, "c")
    loop.at(1.0, note, "a")
    loop.at(2.0, note, "d")
    loop.at(1.0, note, "b")
    loop.run()
    assert seen == [(1.0, "a"), (1.0, "b"), (2.0, "c"), (2.0, "d")]
    assert loop.processed == 4 and len(loop) == 0


def test_an_event_scheduled_for_now_runs_after_those_already_due() -> None:
    loop = EventLoop()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        loop.after(0.0, seen.append, "spawned")

    loop.at(1.0, first)
    loop.at(1.0, seen.append, "second")
    loop.run()
    assert seen == ["first", "second", "spawned"]


def test_run_until_stops_and_resumes() -> None:
    loop = EventLoop()
    seen: list[float] = []
    for t in (0.5, 1.5, 2.5):
        loop.at(t, seen.append, t)
    loop.run(until=2.0)
    assert seen == [0.5, 1.5] and loop.now == 1.5
    loop.run()
    assert seen == [0.5, 1.5, 2.5]


def test_no_scheduling_in_the_past_and_a_bounded_run() -> None:
    loop = EventLoop()
    loop.at(1.0, lambda: None)
    loop.run()
    with pytest.raises(ValueError, match="before now"):
        loop.at(0.5, lambda: None)

    def forever() -> None:
        loop.after(1.0, forever)

    loop.after(0.0, forever)
    with pytest.raises(RuntimeError, match="exceeded 100 events"):
        loop.run(max_events=100)
