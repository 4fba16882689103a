"""The real operator (kopf, clusterwide) against kmock's Kubernetes API emulator.

kmock stores objects and streams watch events; it does not run controllers. The
`ApiServer` below adds what the operator relies on from a real API server's storage
layer (uid, generation bumps on spec changes, creationTimestamp, resourceVersion); the
tests play the Deployment controller (ready counts) and the garbage collector where a
scenario needs them, explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import jsonpatch
import kmock
import kopf
import pytest
import pytest_asyncio
from kmock._internal import enums, rendering

from kvferry.operator.apply import KubeApi
from kvferry.operator.handlers import register
from kvferry.operator.metrics import ClusterSample, MetricsSource
from kvferry.operator.planner import PlannerConfig
from kvferry.operator.settings import OperatorConfig

NS = "serving"
STEP_TIMEOUT_S = 8.0
"""Upper bound for any single expectation; the whole module stays well under a minute."""

RESOURCES: dict[str, dict[str, Any]] = {
    "kvferry.io/v1alpha1/inferenceclusters": {
        "kind": "InferenceCluster",
        "subresources": {"status"},
    },
    "kvferry.io/v1alpha1/workerpools": {"kind": "WorkerPool", "subresources": {"status", "scale"}},
    "apps/v1/deployments": {"kind": "Deployment", "subresources": {"status", "scale"}},
    "v1/services": {"kind": "Service", "subresources": {"status"}},
    "v1/configmaps": {"kind": "ConfigMap", "subresources": set()},
    "v1/pods": {"kind": "Pod", "subresources": {"status"}},
    "v1/events": {"kind": "Event", "subresources": set()},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "subresources": {"status"}},
    "v1/nodes": {"kind": "Node", "subresources": {"status"}, "namespaced": False},
    # kopf's backbone: it waits for these to be discoverable before it starts watching.
    "v1/namespaces": {"kind": "Namespace", "subresources": {"status"}, "namespaced": False},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition",
        "subresources": {"status"},
        "namespaced": False,
    },
}


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server assigns."""

    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == enums.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                meta["resourceVersion"] = str(next(self._versions))
                # NOTE: kmock's ObjectsArray has `in` and `[]` but no `.get()`.
                current = None
                if key in self.objects:
                    current = self.objects[key]
                if "spec" in data and request.subresource != "status" and current is not None:
                    gen = int(current.get("metadata", {}).get("generation", 1))
                    meta["generation"] = gen + 1
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # a stale resourceVersion: 422, as for real
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc


class FakeMetrics:
    """A metrics source the test sets by hand (the router is not part of this test)."""

    def __init__(self) -> None:
        self.sample_value: ClusterSample | None = None

    async def sample(self, c: Any, spec: Any) -> ClusterSample | None:
        return self.sample_value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kmock_options() -> dict[str, Any]:
    return {"cls": ApiServer}


@pytest_asyncio.fixture
async def api_server(kmock: ApiServer) -> ApiServer:
    for key, info in RESOURCES.items():
        kmock.resources[key] = kmock.ResourceInfo(
            kind=info["kind"],
            namespaced=info.get("namespaced", True),
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            subresources=info["subresources"],
        )
    return kmock


@attrs.define
class Harness:
    server: ApiServer
    metrics: FakeMetrics
    clock: FakeClock

    async def wait_for(
        self, check: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> Any:
        """Poll `check` until it returns a truthy value; fail naming `what` otherwise."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
                last = check()
                if last:
                    return last
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def get(self, resource: str, name: str, namespace: str | None = NS) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        return dict(self.server.objects[key].raw)

    async def collect_garbage(self) -> set[str]:
        """Delete objects whose every owner is gone, until none is left (the API server's
        garbage collector, which kmock does not run). Returns `resource/name` deleted."""
        deleted: set[str] = set()
        while True:
            live = {
                obj.raw["metadata"].get("uid")
                for obj in self.server.objects.values()
                if not obj.deleted
            }
            orphans = [
                (res, ns, name)
                for (res, ns, name), obj in self.server.objects.items()
                if not obj.deleted
                and (owners := obj.raw["metadata"].get("ownerReferences"))
                and not any(o["uid"] in live for o in owners)
            ]
            if not orphans:
                return deleted
            for res, ns, name in orphans:
                prefix = "/api" if res.group == "" else f"/apis/{res.group}"
                resp = await self.server.delete(
                    f"{prefix}/{res.version}/namespaces/{ns}/{res.plural}/{name}"
                )
                assert resp.status == 200, await resp.text()
                group = f"{res.group}/" if res.group else ""
                deleted.add(f"{group}{res.version}/{res.plural}/{name}")

    def names(self, resource: str) -> set[str]:
        res = kmock.resource(resource)
        return {
            name
            for (r, _ns, name), obj in self.server.objects.items()
            if r == res and not obj.deleted
        }


@pytest_asyncio.fixture
async def operator(api_server: ApiServer) -> AsyncIterator[Harness]:
    """The operator running in this event loop with a fresh kopf registry."""
    url = str(api_server.url).rstrip("/")
    metrics, clock = FakeMetrics(), FakeClock()
    config = OperatorConfig(
        default_image="kvferry:test",
        status_interval_s=0.2,
        retry_delay_s=0.2,
        planner=PlannerConfig(
            interval_s=0.2, scale_up_window_s=0, scale_down_window_s=60, scale_down_period_s=30
        ),
    )
    registry = kopf.OperatorRegistry()

    async def make_api() -> KubeApi:
        return KubeApi.for_host(url)

    source: MetricsSource = metrics
    register(registry, config, make_api, source)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    @kopf.on.startup(registry=registry)
    def fast(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.watching.reconnect_backoff = 0.1
        settings.queueing.idle_timeout = 0.3
        settings.queueing.exit_timeout = 1.0
        memo["clock"] = clock

    # kopf runs in its own thread and event loop, as in a real process: at exit it cancels
    # the tasks of the loop it runs in, which must not be pytest's.
    stop, ready = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                clusterwide=True,
                standalone=True,
                stop_flag=stop,
                ready_flag=ready,
                memo=kopf.Memo(),
            )
        )

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait, STEP_TIMEOUT_S)
    assert ready.is_set(), "the operator did not start"
    try:
        yield Harness(api_server, metrics, clock)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10.0)
        assert not thread.is_alive(), "the operator did not stop"
