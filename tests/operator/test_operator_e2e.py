"""End to end: the real kopf operator (clusterwide) reconciling against kmock's API
emulator. Each step waits at most `STEP_TIMEOUT_S`; the module takes seconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kvferry.operator.crd.spec import Role
from kvferry.operator.metrics import ClusterSample
from kvferry.operator.planner import PoolObservation
from tests.operator.conftest import NS, Harness
from tests.operator.factories import resource

pytestmark = pytest.mark.asyncio(loop_scope="function")

IC = "kvferry.io/v1alpha1/inferenceclusters"
WP = "kvferry.io/v1alpha1/workerpools"
DEPLOY = "apps/v1/deployments"
PDB = "policy/v1/poddisruptionbudgets"
BASE = f"/apis/kvferry.io/v1alpha1/namespaces/{NS}"
ALL_CHILDREN = {
    "v1/configmaps": {"demo-config", "demo-placement"},
    DEPLOY: {"demo-router", "demo-prefill", "demo-decode"},
    "v1/services": {"demo-router", "demo-prefill", "demo-decode"},
    WP: {"demo-prefill", "demo-decode"},
    PDB: {"demo-prefill", "demo-decode"},
}


async def create(h: Harness, body: dict[str, Any]) -> dict[str, Any]:
    resp = await h.server.post(f"{BASE}/inferenceclusters", json=body)
    assert resp.status in (200, 201), await resp.text()
    return dict(await resp.json())


async def merge_patch(h: Harness, path: str, patch: dict[str, Any]) -> None:
    resp = await h.server.patch(
        path, json=patch, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status == 200, await resp.text()


async def created(h: Harness, **overrides: Any) -> dict[str, Any]:
    ic = await create(h, resource(**overrides))
    await h.wait_for(lambda: h.get(PDB, "demo-decode"), "the last child (decode PDB)")
    return ic


def condition(h: Harness, ctype: str) -> dict[str, Any] | None:
    ic = h.get(IC, "demo") or {}
    for c in ic.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return dict(c)
    return None


def container(h: Harness, name: str) -> dict[str, Any]:
    dep = h.get(DEPLOY, name)
    assert dep is not None, name
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


async def test_create_makes_every_child_owned_by_the_cluster(operator: Harness) -> None:
    ic = await created(operator)
    for res, names in ALL_CHILDREN.items():
        assert operator.names(res) == names, res
        for name in names:
            owner = (operator.get(res, name) or {})["metadata"]["ownerReferences"]
            assert owner == [
                {
                    "apiVersion": "kvferry.io/v1alpha1",
                    "kind": "InferenceCluster",
                    "name": "demo",
                    "uid": ic["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ], (res, name)
    assert (operator.get(DEPLOY, "demo-prefill") or {})["spec"]["replicas"] == 2
    assert (operator.get(DEPLOY, "demo-decode") or {})["spec"]["replicas"] == 3
    args = container(operator, "demo-decode")["args"]
    assert "--role=decode" in args and "--model=/models/llama" in args
    assert "--router=demo-router.serving.svc:50052" in args
    assert container(operator, "demo-router")["image"] == "kvferry:test"
    assert (operator.get("v1/services", "demo-prefill") or {})["spec"]["clusterIP"] == "None"


async def test_status_reports_pods_and_turns_ready(operator: Harness) -> None:
    await created(operator)
    cond = await operator.wait_for(lambda: condition(operator, "Ready"), "a Ready condition")
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForPods")
    # Play the Deployment controller: every pod comes up.
    for name, n in (("demo-router", 1), ("demo-prefill", 2), ("demo-decode", 3)):
        await merge_patch(
            operator,
            f"/apis/apps/v1/namespaces/{NS}/deployments/{name}/status",
            {"status": {"replicas": n, "readyReplicas": n}},
        )
    cond = await operator.wait_for(
        lambda: (c := condition(operator, "Ready")) and c["status"] == "True" and c,
        "Ready=True",
    )
    assert cond["reason"] == "AllPodsReady"
    status = (operator.get(IC, "demo") or {})["status"]
    assert status["decode"] == {"replicas": 3, "ready": 3, "desired": 3}
    assert status["observedGeneration"] == 1
    pool = await operator.wait_for(
        lambda: (
            (operator.get(WP, "demo-decode") or {}).get("status", {}).get("readyReplicas") == 3
            and operator.get(WP, "demo-decode")
        ),
        "the WorkerPool's scale status",
    )
    assert (
        pool["status"]["selector"] == "kvferry.io/cluster=demo,app.kubernetes.io/component=decode"
    )


async def test_spec_change_patches_children(operator: Harness) -> None:
    await created(operator)
    await merge_patch(
        operator,
        f"{BASE}/inferenceclusters/demo",
        {
            "spec": {
                "image": "kvferry:v2",
                "engine": {"maxNumSeqs": 64},
                "decode": {"replicas": 5, "minReplicas": 1, "maxReplicas": 6},
            }
        },
    )
    await operator.wait_for(
        lambda: container(operator, "demo-decode")["image"] == "kvferry:v2", "the new image"
    )
    args = container(operator, "demo-decode")["args"]
    assert "--max-num-seqs=$(KVFERRY_MAX_NUM_SEQS)" in args
    assert (operator.get("v1/configmaps", "demo-config") or {})["data"][
        "KVFERRY_MAX_NUM_SEQS"
    ] == "64"
    await operator.wait_for(
        lambda: (operator.get(DEPLOY, "demo-decode") or {})["spec"]["replicas"] == 5,
        "decode re-seeded to 5 replicas",
    )


async def test_a_placement_change_rolls_the_router_and_a_bad_one_is_refused(
    operator: Harness,
) -> None:
    await created(operator)

    def placement() -> dict[str, Any]:
        data = (operator.get("v1/configmaps", "demo-placement") or {})["data"]
        return dict(yaml.safe_load(data["placement.yaml"]))

    def router_hash() -> str:
        dep = operator.get(DEPLOY, "demo-router") or {}
        return str(dep["spec"]["template"]["metadata"]["annotations"]["kvferry.io/config-hash"])

    assert placement() == {"policy": "kvferry"}
    before = router_hash()
    tuned = {"policy": "kvferry", "config": {"shortlist": 3}}
    await merge_patch(
        operator, f"{BASE}/inferenceclusters/demo", {"spec": {"router": {"placement": tuned}}}
    )
    await operator.wait_for(lambda: placement().get("shortlist") == 3, "the new placement")
    await operator.wait_for(lambda: router_hash() != before, "the router to roll")
    # a key the router would refuse: the cluster says so, and the router is left alone
    bad = {"policy": "kvferry", "config": {"shortlist": 0}}
    await merge_patch(
        operator, f"{BASE}/inferenceclusters/demo", {"spec": {"router": {"placement": bad}}}
    )
    cond = await operator.wait_for(
        lambda: (c := condition(operator, "Ready")) and c["reason"] == "ValidationFailed" and c,
        "ValidationFailed",
    )
    assert "spec.router.placement.config" in cond["message"]
    assert "shortlist" in cond["message"]
    assert placement().get("shortlist") == 3


async def test_scaling_a_pool_moves_its_deployment_within_bounds(operator: Harness) -> None:
    await created(operator)
    scale = f"{BASE}/workerpools/demo-prefill/scale"
    await merge_patch(operator, scale, {"spec": {"replicas": 4}})  # kubectl scale --replicas=4
    await operator.wait_for(
        lambda: (operator.get(DEPLOY, "demo-prefill") or {})["spec"]["replicas"] == 4,
        "prefill deployment at 4",
    )
    await merge_patch(operator, scale, {"spec": {"replicas": 9}})  # beyond maxReplicas=4
    await operator.wait_for(
        lambda: (operator.get(WP, "demo-prefill") or {})["spec"]["replicas"] == 9, "the scale"
    )
    await operator.wait_for(lambda: operator.get(DEPLOY, "demo-prefill"), "deployment")
    assert (operator.get(DEPLOY, "demo-prefill") or {})["spec"]["replicas"] == 4
    # A later reconcile of the cluster keeps the scaled count (it does not re-seed).
    await merge_patch(operator, f"{BASE}/inferenceclusters/demo", {"spec": {"image": "x:1"}})
    await operator.wait_for(lambda: container(operator, "demo-prefill")["image"] == "x:1", "x:1")
    assert (operator.get(WP, "demo-prefill") or {})["spec"]["replicas"] == 9
    assert (operator.get(DEPLOY, "demo-prefill") or {})["spec"]["replicas"] == 4


async def test_invalid_spec_sets_validation_failed_and_an_event(operator: Harness) -> None:
    bad = resource(prefill={"replicas": 1, "minReplicas": 3, "maxReplicas": 2})
    await create(operator, bad)
    cond = await operator.wait_for(lambda: condition(operator, "Ready"), "a Ready condition")
    assert (cond["status"], cond["reason"]) == ("False", "ValidationFailed")
    assert "minReplicas must be <= maxReplicas" in cond["message"]
    assert condition(operator, "Degraded")["status"] == "True"  # type: ignore[index]
    events = await operator.wait_for(
        lambda: [
            e for n in operator.names("v1/events")
            if (e := operator.get("v1/events", n)) and e.get("reason") == "ValidationFailed"
        ],
        "a ValidationFailed event",
    )  # fmt: skip
    assert events[0]["type"] == "Warning"
    assert events[0]["involvedObject"]["name"] == "demo"
    assert operator.names(DEPLOY) == set()  # nothing was created
    # Fixing the spec reconciles it.
    await merge_patch(
        operator, f"{BASE}/inferenceclusters/demo", {"spec": {"prefill": {"minReplicas": 1}}}
    )
    await operator.wait_for(lambda: operator.get(DEPLOY, "demo-prefill"), "prefill after fix")


async def test_delete_leaves_nothing_behind(operator: Harness) -> None:
    await created(operator)
    resp = await operator.server.delete(f"{BASE}/inferenceclusters/demo")
    assert resp.status == 200, await resp.text()
    # kopf's finalizer (it stops the cluster's timer first) is released by the operator.
    await operator.wait_for(lambda: operator.get(IC, "demo") is None, "the cluster to go")
    # kmock has no garbage collector: collect what the owner references point at.
    collected = await operator.collect_garbage()
    assert collected == {f"{r}/{n}" for r, names in ALL_CHILDREN.items() for n in names}
    for res in ALL_CHILDREN:
        assert operator.names(res) == set(), res


async def test_planner_scales_decode_from_router_figures(operator: Harness) -> None:
    await created(operator, objectives={"ttftMs": 500, "tpotMs": 50})
    # Decode KV use at 100% of blocks against a target of 85%: 3 -> ceil(3 * 1.18) = 4.
    operator.metrics.sample_value = ClusterSample(
        pools={
            Role.PREFILL: PoolObservation(requests=10, prefill_tokens_waiting=0),
            Role.DECODE: PoolObservation(requests=10, kv_utilization=1.0),
        },
        ttft_ms=400.0,  # exactly at the 80% target: prefill holds
    )
    await operator.wait_for(
        lambda: (operator.get(DEPLOY, "demo-decode") or {})["spec"]["replicas"] == 4,
        "decode scaled up to 4",
    )
    assert (operator.get(WP, "demo-decode") or {})["spec"]["replicas"] == 4
    assert (operator.get(DEPLOY, "demo-prefill") or {})["spec"]["replicas"] == 2
    # The sampled latency is reported in the status (the TTFT/TPOT printer columns).
    observed = await operator.wait_for(
        lambda: (operator.get(IC, "demo") or {})["status"]["observed"],
        "observed latency in the status",
    )
    assert (observed["ttftMs"], observed.get("tpotMs")) == (400.0, None)
    assert observed["sampledAt"].endswith("Z")


async def test_worker_pods_get_their_nodes_topology(operator: Harness) -> None:
    await created(operator)
    await operator.server.post(
        "/api/v1/nodes",
        json={
            "metadata": {
                "name": "gpu-7",
                "labels": {"nvidia.com/gpu.clique": "c1.3", "topology.kubernetes.io/zone": "z1"},
            }
        },
    )
    template = (operator.get(DEPLOY, "demo-decode") or {})["spec"]["template"]
    pod = {"metadata": {**template["metadata"], "name": "demo-decode-abc", "namespace": NS}}
    pod["spec"] = {**template["spec"], "nodeName": "gpu-7"}
    await operator.server.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
    annotations = await operator.wait_for(
        lambda: (operator.get("v1/pods", "demo-decode-abc") or {})["metadata"]["annotations"][
            "kvferry.io/topology"
        ],
        "the topology annotation",
    )
    # Canonical levels (kvferry.topology), as the worker registers them; no rack label.
    assert json.loads(annotations) == {"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"}
