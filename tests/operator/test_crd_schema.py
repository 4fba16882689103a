"""The CRD schema (one source: operator/crd/) against example and invalid resources:
jsonschema on the generated openAPIV3Schema, the CEL rules evaluated by cel-python, and
the operator's own parser — all three must agree."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest

from kvferry.operator.crd.generate import DEFAULT_OUT, stale_files
from kvferry.operator.crd.manifests import inference_cluster_crd
from kvferry.operator.crd.schema import SpecError, parse, rules_of, to_json
from kvferry.operator.crd.spec import InferenceClusterSpec, ModelSource, PoolSpec, RouterPorts
from tests.operator.factories import resource, spec_dict

SCHEMA = inference_cluster_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

VALID: list[tuple[str, dict[str, Any]]] = [
    ("base", spec_dict()),
    ("preset, defaults only", {"model": {"name": "tiny", "source": {"preset": "tiny"}}}),
    (
        "everything",
        spec_dict(
            router={"tlsSecretName": "tls", "authTokenSecret": {"name": "tok"}},
            objectives={"ttftMs": 300, "tpotMs": 40},
            topology={"pairing": "required", "rackLabel": "example.com/rack"},
            kvTransfer={"maxChunkBytes": 1 << 20},
            engine={"blockSize": 16, "gpuMemoryUtilization": 0.9},
            decode={
                "replicas": 2,
                "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "template": {"metadata": {"annotations": {"a": "b"}}},
            },
        ),
    ),
]

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"prefill": {"replicas": 1}}, "spec.model: is required"),
    (
        "min > max",
        spec_dict(prefill={"replicas": 1, "minReplicas": 3, "maxReplicas": 2}),
        "minReplicas must be <= maxReplicas",
    ),
    (
        "replicas > max",
        spec_dict(decode={"replicas": 9, "maxReplicas": 4}),
        "within [minReplicas, maxReplicas]",
    ),
    ("negative replicas", spec_dict(decode={"replicas": -1}), "must be >= 0"),
    (
        "two sources",
        {"model": {"name": "m", "source": {"preset": "tiny", "hostPath": {"path": "/m"}}}},
        "exactly one",
    ),
    ("no source", {"model": {"name": "m", "source": {}}}, "exactly one"),
    (
        "bad dtype",
        {"model": {"name": "m", "source": {"preset": "tiny"}, "dtype": "fp8"}},
        "must be one of",
    ),
    ("bad pairing", spec_dict(topology={"pairing": "sometimes"}), "must be one of"),
    (
        "relative hostPath",
        {"model": {"name": "m", "source": {"hostPath": {"path": "m"}}}},
        "must match",
    ),
    ("duplicate ports", spec_dict(router={"ports": {"grpc": 9000, "http": 9000}}), "distinct"),
    ("two routers", spec_dict(router={"replicas": 2}), "must be <= 1"),
    ("zero objective", spec_dict(objectives={"ttftMs": 0, "tpotMs": 10}), "must be >= 1"),
    ("unknown field", spec_dict(colour="blue"), "unknown field"),
]


def _cel_failures(spec: dict[str, Any]) -> list[str]:
    """Evaluate every CEL rule of the spec's objects with cel-python, on defaulted data."""
    parsed = _parse_without_rules(spec)
    failures: list[str] = []
    env = celpy.Environment()
    for cls, data in (
        (PoolSpec, parsed.get("prefill")),
        (PoolSpec, parsed.get("decode")),
        (RouterPorts, (parsed.get("router") or {}).get("ports")),
        (ModelSource, (parsed.get("model") or {}).get("source")),
    ):
        for rule in rules_of(cls):
            program = env.program(env.compile(rule.cel))
            if data is not None and not program.evaluate({"self": celpy.json_to_cel(data)}):
                failures.append(rule.message)
    return failures


def _parse_without_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with defaults filled in, as the API server has it when CEL runs."""
    defaults = to_json(parse(InferenceClusterSpec, spec_dict()))
    merged = {**defaults, **spec}
    for key in ("prefill", "decode"):
        merged[key] = {**defaults[key], **spec.get(key, {})}
    merged["router"] = {**defaults["router"], **spec.get("router", {})}
    merged["router"]["ports"] = {
        **defaults["router"]["ports"],
        **spec.get("router", {}).get("ports", {}),
    }
    return merged


def test_generated_crds_are_up_to_date() -> None:
    assert stale_files(DEFAULT_OUT) == [], "run `make crds`"


@pytest.mark.parametrize(("name", "spec"), VALID, ids=[v[0] for v in VALID])
def test_valid_resources_pass_schema_cel_and_parser(name: str, spec: dict[str, Any]) -> None:
    jsonschema.validate({**resource(), "spec": spec}, SCHEMA)
    assert _cel_failures(spec) == []
    parsed = parse(InferenceClusterSpec, spec)
    assert parse(InferenceClusterSpec, to_json(parsed)) == parsed  # round trip


@pytest.mark.parametrize(("name", "spec", "message"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_resources_are_refused_by_the_crd_and_the_parser(
    name: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        parse(InferenceClusterSpec, spec)
    try:
        jsonschema.validate({**resource(), "spec": spec}, SCHEMA)
        schema_ok = True
    except jsonschema.ValidationError:
        schema_ok = False
    if schema_ok and name != "unknown field":  # structural pruning drops unknown fields
        assert _cel_failures(spec), "neither the schema nor a CEL rule refuses it"


def test_schema_declares_printer_columns_scale_and_short_names() -> None:
    crd = inference_cluster_crd()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready", "Reason", "Model", "Prefill", "Decode", "TTFT(ms)", "TPOT(ms)", "Age",
    ]  # fmt: skip
    assert "ic" in crd["spec"]["names"]["shortNames"]
    assert version["subresources"] == {"status": {}}
    pool = SCHEMA["properties"]["spec"]["properties"]["prefill"]
    assert pool["properties"]["minReplicas"]["minimum"] == 0
    assert pool["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
