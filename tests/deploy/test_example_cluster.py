"""The chart's example InferenceCluster against the generated CRD: jsonschema on its
openAPIV3Schema (types, required fields, minimums, enums) and the operator's parser (the
same rules the CRD states in CEL). A deliberately broken example must be rejected."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from kvferry.operator.crd.schema import SpecError, parse
from kvferry.operator.crd.spec import InferenceClusterSpec
from kvferry.operator.desired.objects import parse_spec
from tests.deploy.chart import CI_VALUES, crd_schema, is_custom, render

ENABLED = ("exampleCluster.enabled=true",)


def _example(sets: tuple[str, ...] = (), ci: bool = False) -> dict[str, Any]:
    objects = render((CI_VALUES,) if ci else (), ENABLED + sets)
    (cluster,) = [o for o in objects if is_custom(o)]
    return cluster


@pytest.mark.parametrize("ci", [False, True], ids=["default-spec", "ci-gpu-spec"])
def test_example_is_accepted(ci: bool) -> None:
    cluster = _example(ci=ci)
    assert (cluster["apiVersion"], cluster["kind"]) == ("kvferry.io/v1alpha1", "InferenceCluster")
    assert cluster["metadata"]["namespace"] == "kvferry-system"
    jsonschema.validate(cluster, crd_schema("InferenceCluster"))
    parse_spec(cluster["spec"])  # the schema's rules and the router's placement parser


def test_ci_example_is_a_gpu_cluster() -> None:
    spec = parse(InferenceClusterSpec, _example(ci=True)["spec"], "spec")
    assert spec.decode.resources is not None and spec.decode.resources.limits is not None
    assert str(spec.decode.resources.limits["nvidia.com/gpu"]) == "1"
    assert spec.model.source.pvc is not None and spec.model.source.pvc.claim_name == "models"
    assert spec.objectives is not None and spec.objectives.ttft_ms == 500
    assert spec.router.placement.config == {"candidates": 16, "shortlist": 3}


SCHEMA_INVALID: list[tuple[str, str]] = [
    ("negative replicas", "exampleCluster.spec.decode.replicas=-1"),
    ("unknown dtype", "exampleCluster.spec.model.dtype=fp8"),
    ("bad pairing", "exampleCluster.spec.topology.pairing=sometimes"),
    ("two routers", "exampleCluster.spec.router.replicas=2"),
    ("unknown placement policy", "exampleCluster.spec.router.placement.policy=fastest"),
    ("zero objective", "exampleCluster.spec.objectives.ttftMs=0"),
]


@pytest.mark.parametrize(("name", "item"), SCHEMA_INVALID, ids=[b[0] for b in SCHEMA_INVALID])
def test_invalid_example_is_rejected_by_the_schema(name: str, item: str) -> None:
    cluster = _example((item,))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, crd_schema("InferenceCluster"))
    with pytest.raises(SpecError):
        parse(InferenceClusterSpec, cluster["spec"], "spec")


RULE_INVALID: list[tuple[str, str, str]] = [
    ("min above max", "exampleCluster.spec.prefill.minReplicas=3", "minReplicas must be <="),
    ("replicas above max", "exampleCluster.spec.decode.replicas=5", "within [minReplicas"),
]


@pytest.mark.parametrize(
    ("name", "item", "message"), RULE_INVALID, ids=[b[0] for b in RULE_INVALID]
)
def test_invalid_example_is_rejected_by_the_rules(name: str, item: str, message: str) -> None:
    """Cross-field rules are CEL in the CRD (jsonschema cannot state them); the parser
    holds the same rules, so it stands in for the API server here."""
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        parse(InferenceClusterSpec, _example((item,))["spec"], "spec")
