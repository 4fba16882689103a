"""Registry, and the least-loaded built-in policy (placement v1's behaviour): table-driven,
no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvferry.errors import ConfigError
from kvferry.services.router.placement import (
    NoEligibleWorkersError,
    PlacementRequest,
    StaticView,
    build_policy,
    named_config,
)
from kvferry.services.router.registry import (
    DuplicateWorkerError,
    Registry,
    RegistryConfig,
    UnknownWorkerError,
)
from kvferry.services.router.workers import (
    Role,
    WorkerId,
    WorkerInfo,
    WorkerLoad,
    WorkerRecord,
    WorkerState,
)
from tests.unit.placement_factories import worker

P, D, M = Role.PREFILL, Role.DECODE, Role.MIXED
LONG, SHORT = 500, 10

CASES = [
    # (name, workers, prompt tokens, excluded, expected placement)
    ("one pair", [worker("p", P), worker("d", D)], LONG, (), ("d", "p")),
    ("short prompt skips prefill", [worker("p", P), worker("d", D)], SHORT, (), ("d", None)),
    ("no prefill worker: decode computes", [worker("d", D)], LONG, (), ("d", None)),
    (
        "least busy decode",
        [worker("d1", D, running=5), worker("d2", D, running=1), worker("p", P)],
        LONG,
        (),
        ("d2", "p"),
    ),
    (
        "router's in-flight count beats a stale heartbeat",
        [worker("d1", D, in_flight=4), worker("d2", D, running=2), worker("p", P)],
        LONG,
        (),
        ("d2", "p"),
    ),
    (
        "tie on load: more free KV blocks",
        [worker("d1", D, free=10), worker("d2", D, free=90), worker("p", P)],
        LONG,
        (),
        ("d2", "p"),
    ),
    (
        "prefill by waiting prompt tokens",
        [worker("d", D), worker("p1", P, prefill_tokens=4000), worker("p2", P, prefill_tokens=10)],
        LONG,
        (),
        ("d", "p2"),
    ),
    (
        "draining workers take nothing new",
        [worker("d1", D, draining=True), worker("d2", D, running=9), worker("p", P, draining=True)],
        LONG,
        (),
        ("d2", None),
    ),
    (
        "failed workers are excluded on retry",
        [worker("d1", D), worker("d2", D, running=3), worker("p1", P), worker("p2", P, waiting=2)],
        LONG,
        ("d1", "p1"),
        ("d2", "p2"),
    ),
    ("one mixed worker runs whole", [worker("m", M)], LONG, (), ("m", None)),
    (
        "mixed workers run whole requests (the colocated baseline)",
        [worker("m1", M, running=1), worker("m2", M)],
        LONG,
        (),
        ("m2", None),
    ),
    (
        "a mixed worker decodes after a prefill worker",
        [worker("m", M), worker("p", P)],
        LONG,
        (),
        ("m", "p"),
    ),
    ("prefill-only cluster cannot decode", [worker("p", P)], LONG, (), None),
    ("empty cluster", [], LONG, (), None),
    ("every decoder excluded", [worker("d", D), worker("p", P)], LONG, ("d",), None),
]


@pytest.mark.parametrize(
    ("workers", "tokens", "exclude", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_least_loaded_placement(
    workers: list[WorkerRecord],
    tokens: int,
    exclude: tuple[str, ...],
    expected: tuple[str, str | None] | None,
) -> None:
    policy = build_policy(named_config("least-loaded", short_prompt_tokens=64))
    request = PlacementRequest(tokens, exclude=frozenset(WorkerId(w) for w in exclude))
    view = StaticView(workers)
    if expected is None:
        with pytest.raises(NoEligibleWorkersError, match="no decode-capable worker"):
            policy.place(request, view)
    else:
        decode, prefill = expected
        placement = policy.place(request, view)
        assert (placement.decode, placement.prefill) == (
            WorkerId(decode),
            WorkerId(prefill) if prefill else None,
        )


def test_registry_register_heartbeat_expire_and_restart() -> None:
    reg = Registry(RegistryConfig(ttl_s=5.0))
    a = worker("a", D).info
    reg.register(a, WorkerLoad(), now=0.0)
    reg.register(worker("b", P).info, WorkerLoad(), now=0.0)
    reg.heartbeat(a.worker_id, WorkerLoad(num_running=3, free_kv_blocks=5, total_kv_blocks=9), 4.0)
    assert [r.info.worker_id for r in reg.expire(now=5.5)] == [WorkerId("b")]
    record = reg.get(a.worker_id)
    assert record is not None and record.load.num_running == 3
    reg.placed(a.worker_id, +1)
    reg.placed(a.worker_id, -1)
    reg.placed(a.worker_id, -1)
    assert record.in_flight == 0  # never negative
    with pytest.raises(UnknownWorkerError):
        reg.heartbeat(WorkerId("b"), WorkerLoad(), 6.0)
    reg.heartbeat(a.worker_id, WorkerLoad(), 6.0, draining=True)
    assert record.state is WorkerState.DRAINING
    reg.register(a, WorkerLoad(), now=6.5)  # the same process again: still draining
    again = reg.get(a.worker_id)
    assert again is not None and again.state is WorkerState.DRAINING
    reg.register(replace(a, incarnation=a.incarnation + 1), WorkerLoad(), now=7.0)
    restarted = reg.get(a.worker_id)  # a restart re-registers: healthy again
    assert restarted is not None and restarted.state is WorkerState.HEALTHY
    assert [r.info.worker_id for r in reg.expire(now=12.1)] == [a.worker_id]
    assert reg.records() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_running": -1}, "num_running"),
        ({"free_kv_blocks": 5, "total_kv_blocks": 4}, "exceeds"),
    ],
)
def test_bad_load_reports_are_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerLoad(**kwargs)


def test_bad_registration_and_config() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="worker_id"):
        reg.register(WorkerInfo(WorkerId(""), D, "x:1", "x:2", "tiny"), WorkerLoad(), 0.0)
    with pytest.raises(ValueError, match="ttl_s"):
        RegistryConfig(ttl_s=0)
    with pytest.raises(ConfigError, match="short_prompt_tokens"):
        named_config("least-loaded", short_prompt_tokens=-1)


def test_a_re_registration_keeps_the_routers_in_flight_count() -> None:
    reg = Registry()
    a = worker("a", D).info
    reg.register(a, WorkerLoad(), now=0.0)
    reg.placed(a.worker_id, +1, 700)
    reg.placed(a.worker_id, +1, 300)
    reg.register(a, WorkerLoad(), now=1.0)  # forgotten and back, same address
    record = reg.get(a.worker_id)
    assert record is not None and (record.in_flight, record.in_flight_prefill_tokens) == (2, 1000)
    reg.placed(a.worker_id, -1, -700)
    assert (record.in_flight, record.in_flight_prefill_tokens) == (1, 300)
    reg.placed(a.worker_id, -1, -400)  # never negative
    assert (record.in_flight, record.in_flight_prefill_tokens) == (0, 0)
    reg.placed(a.worker_id, +1, 50)
    moved = replace(a, address="10.0.0.9:1")  # a new process elsewhere starts from zero
    reg.register(moved, WorkerLoad(), now=1.0 + reg.config.ttl_s + 0.1)
    record = reg.get(a.worker_id)
    assert record is not None and (record.in_flight, record.in_flight_prefill_tokens) == (0, 0)


def test_a_live_worker_id_cannot_be_taken_from_another_address() -> None:
    reg = Registry(RegistryConfig(ttl_s=5.0))
    a = worker("a", D).info
    reg.register(a, WorkerLoad(), now=0.0)
    impostor = replace(a, address="10.0.0.9:1")
    with pytest.raises(DuplicateWorkerError, match="unique --worker-id"):
        reg.register(impostor, WorkerLoad(), now=4.0)
    record = reg.get(a.worker_id)
    assert record is not None and record.info.address == a.address
    reg.register(impostor, WorkerLoad(), now=5.5)  # the old one went silent: it moved
    record = reg.get(a.worker_id)
    assert record is not None and record.info.address == "10.0.0.9:1"


def test_records_view_is_one_list_until_a_worker_comes_or_goes() -> None:
    """Placement caches its role pools by this list's identity."""
    reg = Registry(RegistryConfig(ttl_s=5.0))
    reg.register(worker("a", D).info, WorkerLoad(), now=0.0)
    first = reg.records_view()
    reg.heartbeat(WorkerId("a"), WorkerLoad(num_running=2), 1.0)
    reg.placed(WorkerId("a"), +1)
    reg.set_draining(WorkerId("a"))
    assert reg.records_view() is first and first[0].load.num_running == 2
    reg.register(worker("b", P).info, WorkerLoad(), now=1.0)
    second = reg.records_view()
    assert second is not first and [r.info.worker_id for r in second] == ["a", "b"]
    reg.remove(WorkerId("b"))
    third = reg.records_view()
    assert third is not second and [r.info.worker_id for r in third] == ["a"]
    assert [r.info.worker_id for r in reg.expire(now=10.0)] == ["a"]
    assert reg.records_view() == []
