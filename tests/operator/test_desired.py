"""`desired()`: exact children for tiny specs, no I/O."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvferry.operator.crd.schema import SpecError
from kvferry.operator.crd.spec import PlacementPolicy, Role
from kvferry.operator.desired.objects import (
    Observed,
    ObservedPool,
    desired,
    parse_spec,
    pool_replicas,
)
from kvferry.operator.desired.pods import CONTAINER_SECURITY
from kvferry.services.router.placement import PlacementConfig
from kvferry.services.router.placement.builtin import BUILTIN, load_config
from tests.operator.factories import ref, spec, spec_dict

OBS = Observed(image="kvferry:1")


def by_key(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def pod_spec(objs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(objs[f"Deployment/{name}"]["spec"]["template"]["spec"])


def test_children_and_their_order() -> None:
    objs = desired(ref(), spec(), OBS)
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in objs] == [
        "ConfigMap/demo-config",
        "ConfigMap/demo-placement",
        "Deployment/demo-router",
        "Service/demo-router",
        "WorkerPool/demo-prefill",
        "Deployment/demo-prefill",
        "Service/demo-prefill",
        "PodDisruptionBudget/demo-prefill",
        "WorkerPool/demo-decode",
        "Deployment/demo-decode",
        "Service/demo-decode",
        "PodDisruptionBudget/demo-decode",
    ]
    for o in objs:
        assert o["metadata"]["namespace"] == "serving"
        assert o["metadata"]["ownerReferences"][0]["uid"] == "uid-demo"
        assert o["metadata"]["labels"]["kvferry.io/cluster"] == "demo"


def test_every_container_is_locked_down() -> None:
    objs = by_key(desired(ref(), spec(), OBS))
    for name in ("demo-router", "demo-prefill", "demo-decode"):
        ps = pod_spec(objs, name)
        assert ps["securityContext"]["runAsNonRoot"] is True
        assert ps["automountServiceAccountToken"] is False
        for c in ps["containers"]:
            assert c["securityContext"] == CONTAINER_SECURITY
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_router_service_ports_and_public_service() -> None:
    objs = by_key(desired(ref(), spec(router={"serviceType": "LoadBalancer"}), OBS))
    ports = {p["name"]: p["port"] for p in objs["Service/demo-router"]["spec"]["ports"]}
    assert ports == {"grpc": 50051, "registry": 50052, "http": 8000, "metrics": 9090}
    public = objs["Service/demo-router-public"]["spec"]
    assert public["type"] == "LoadBalancer"
    assert [p["name"] for p in public["ports"]] == ["grpc", "http"]


@pytest.mark.parametrize(
    ("pairing", "decode_key"),
    [
        ("required", "requiredDuringSchedulingIgnoredDuringExecution"),
        ("preferred", "preferredDuringSchedulingIgnoredDuringExecution"),
    ],
)
def test_decode_follows_prefill_into_an_nvlink_domain(pairing: str, decode_key: str) -> None:
    objs = by_key(desired(ref(), spec(topology={"pairing": pairing}), OBS))
    decode = pod_spec(objs, "demo-decode")["affinity"]["podAffinity"]
    assert list(decode) == [decode_key]
    prefill = pod_spec(objs, "demo-prefill")["affinity"]["podAffinity"]
    assert list(prefill) == ["preferredDuringSchedulingIgnoredDuringExecution"]  # never required
    term = str(decode[decode_key])
    assert "nvidia.com/gpu.clique" in term and "'app.kubernetes.io/component': 'prefill'" in term
    spread = pod_spec(objs, "demo-decode")["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == [
        "topology.kubernetes.io/zone",
        "topology.kvferry.io/rack",
    ]


def test_model_sources_become_volumes_and_flags() -> None:
    pvc = by_key(desired(ref(), spec(), OBS))
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod_spec(pvc, "demo-decode")["volumes"]
    preset = by_key(desired(ref(), spec(model={"name": "t", "source": {"preset": "tiny"}}), OBS))
    args = pod_spec(preset, "demo-decode")["containers"][0]["args"]
    assert "--model=tiny" in args
    assert all(v["name"] != "model" for v in pod_spec(preset, "demo-decode")["volumes"])


def test_engine_settings_go_through_the_configmap_and_roll_pods() -> None:
    a = by_key(desired(ref(), spec(engine={"maxNumSeqs": 32}), OBS))
    b = by_key(desired(ref(), spec(engine={"maxNumSeqs": 64}), OBS))
    assert a["ConfigMap/demo-config"]["data"]["KVFERRY_MAX_NUM_SEQS"] == "32"
    assert (
        "--max-num-seqs=$(KVFERRY_MAX_NUM_SEQS)"
        in pod_spec(a, "demo-decode")["containers"][0]["args"]
    )
    hash_a = a["Deployment/demo-decode"]["spec"]["template"]["metadata"]["annotations"]
    hash_b = b["Deployment/demo-decode"]["spec"]["template"]["metadata"]["annotations"]
    assert hash_a["kvferry.io/config-hash"] != hash_b["kvferry.io/config-hash"]


def test_template_overrides_merge_but_cannot_steal_selector_labels() -> None:
    override = {
        "metadata": {"labels": {"kvferry.io/cluster": "other", "team": "a"}},
        "spec": {
            "priorityClassName": "gpu",
            "containers": [{"name": "worker", "env": [{"name": "X", "value": "1"}]}],
        },
    }
    objs = by_key(desired(ref(), spec(decode={"replicas": 1, "template": override}), OBS))
    tmpl = objs["Deployment/demo-decode"]["spec"]["template"]
    assert tmpl["metadata"]["labels"]["kvferry.io/cluster"] == "demo"
    assert tmpl["metadata"]["labels"]["team"] == "a"
    assert tmpl["spec"]["priorityClassName"] == "gpu"
    env = {e["name"] for e in tmpl["spec"]["containers"][0]["env"]}
    assert {"X", "POD_IP", "POD_NAME"} <= env


@pytest.mark.parametrize(
    ("spec_replicas", "observed", "want_pool", "want_deploy"),
    [
        (2, None, 2, 2),  # new: seeded from the spec
        (2, ObservedPool(replicas=4, seeded_from=2), 4, 4),  # scaled since: kept
        (3, ObservedPool(replicas=4, seeded_from=2), 3, 3),  # spec edited: re-seeded
        (2, ObservedPool(replicas=9, seeded_from=2), 9, 4),  # beyond max: Deployment clamped
        (2, ObservedPool(replicas=0, seeded_from=2), 0, 1),  # below min
    ],
)
def test_pool_replicas(
    spec_replicas: int, observed: ObservedPool | None, want_pool: int, want_deploy: int
) -> None:
    s = spec(prefill={"replicas": spec_replicas, "minReplicas": 1, "maxReplicas": 4})
    assert pool_replicas(s.prefill, observed) == want_pool
    obs = Observed(image="i", pools={Role.PREFILL: observed} if observed else {})
    objs = by_key(desired(ref(), s, obs))
    assert objs["WorkerPool/demo-prefill"]["spec"]["replicas"] == want_pool
    assert objs["Deployment/demo-prefill"]["spec"]["replicas"] == want_deploy
    assert objs["WorkerPool/demo-prefill"]["metadata"]["annotations"] == {
        "kvferry.io/seed-replicas": str(spec_replicas)
    }


def test_workers_get_the_kv_transfer_settings_and_their_podinfo() -> None:
    s = spec(kvTransfer={"maxChunkBytes": 1 << 20, "compression": "fp8"})
    objs = by_key(desired(ref(), s, OBS))
    config = next(o for o in objs.values() if o["kind"] == "ConfigMap")["data"]
    assert (config["KVFERRY_KV_MAX_CHUNK_BYTES"], config["KVFERRY_KV_COMPRESSION"]) == (
        str(1 << 20),
        "fp8",
    )
    for role in ("prefill", "decode"):
        args = pod_spec(objs, f"demo-{role}")["containers"][0]["args"]
        assert "--kv-max-chunk-bytes=$(KVFERRY_KV_MAX_CHUNK_BYTES)" in args
        assert "--kv-compression=$(KVFERRY_KV_COMPRESSION)" in args
        assert "--podinfo-dir=/etc/kvferry/podinfo" in args


def test_router_reads_its_placement_from_a_configmap_and_rolls_when_it_changes() -> None:
    default = by_key(desired(ref(), spec(), OBS))
    text = default["ConfigMap/demo-placement"]["data"]["placement.yaml"]
    assert yaml.safe_load(text) == {"policy": "kvferry"}
    router = pod_spec(default, "demo-router")
    assert (
        "--placement-config=/etc/kvferry/placement/placement.yaml"
        in (router["containers"][0]["args"])
    )
    assert {"name": "placement", "configMap": {"name": "demo-placement"}} in router["volumes"]
    mounts = router["containers"][0]["volumeMounts"]
    assert {"name": "placement", "mountPath": "/etc/kvferry/placement", "readOnly": True} in mounts

    tuned = {"policy": "cache-aware", "config": {"candidates": 16, "transfer": {"ewma_alpha": 0.5}}}
    changed = by_key(desired(ref(), spec(router={"placement": tuned}), OBS))
    data = yaml.safe_load(changed["ConfigMap/demo-placement"]["data"]["placement.yaml"])
    assert data == {"policy": "cache-aware", "candidates": 16, "transfer": {"ewma_alpha": 0.5}}
    # the router's own loader reads what the operator wrote
    policy = load_config_text(changed["ConfigMap/demo-placement"]["data"]["placement.yaml"])
    assert (policy.name, policy.candidates, policy.transfer.ewma_alpha) == ("cache-aware", 16, 0.5)

    def digest(objs: dict[str, dict[str, Any]]) -> str:
        meta = objs["Deployment/demo-router"]["spec"]["template"]["metadata"]
        return str(meta["annotations"]["kvferry.io/config-hash"])

    assert digest(default) != digest(changed)
    # the workers' pods do not roll for a router-only change
    assert pod_template_hash(default, "demo-decode") == pod_template_hash(changed, "demo-decode")


def load_config_text(text: str) -> PlacementConfig:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "placement.yaml"
        path.write_text(text)
        return load_config(path)


def pod_template_hash(objs: dict[str, dict[str, Any]], name: str) -> str:
    meta = objs[f"Deployment/{name}"]["spec"]["template"]["metadata"]
    return str(meta["annotations"]["kvferry.io/config-hash"])


@pytest.mark.parametrize(
    ("placement", "field", "message"),
    [
        ({"config": {"policy": "random"}}, "spec.router.placement.config.policy", "policy"),
        ({"config": {"candidates": -1}}, "spec.router.placement.config", "candidates"),
        ({"config": {"scorers": [{"name": "nope"}]}}, "spec.router.placement.config", "nope"),
        ({"config": {"bogus": 1}}, "spec.router.placement.config", "bogus"),
        (
            {"config": {"scorers": [{"name": "running_load", "load_scale": 0}]}},
            "spec.router.placement.config",
            "load_scale",
        ),
        ({"policy": "fastest"}, "spec.router.placement.policy", "fastest"),
    ],
)
def test_a_placement_the_router_would_refuse_fails_validation(
    placement: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(router={"placement": placement}))
    assert err.value.path == field
    assert message in str(err.value)


def test_placement_policies_are_the_routers_built_ins() -> None:
    assert {p.value for p in PlacementPolicy} == set(BUILTIN)
