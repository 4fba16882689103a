"""The chart with the real helm: lint, render with default and CI values, and validate every
built-in object offline against Kubernetes' own schemas (kubernetes-validate --strict)."""

from __future__ import annotations

import copy
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kvferry.operator.settings import DEFAULT_IMAGE
from tests.deploy.chart import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    KUBECTL,
    ROOT,
    helm,
    is_custom,
    one,
    render,
    template_args,
)

VALUES: dict[str, tuple[Path, ...]] = {"default": (), "ci": (CI_VALUES,)}


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_lint_strict(values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART)] + [a for p in values for a in ("--values", str(p))]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_metadata_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"]
    # The default image the chart runs is the one the operator falls back to.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    image = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    assert image == DEFAULT_IMAGE


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_every_builtin_object_validates_strictly(
    values: tuple[Path, ...], kube_version: str
) -> None:
    objects = render(values, kube_version=kube_version)
    builtin = [o for o in objects if not is_custom(o)]
    kinds = sorted({o["kind"] for o in builtin})
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Pod",  # the helm test
            "ServiceAccount",
        ]
    )
    for obj in builtin:
        # Raises ValidationError with the path of the first bad field.
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator is not vacuous: a misplaced field in the operator's pod fails."""
    dep = copy.deepcopy(one(render(), "Deployment"))
    dep["spec"]["template"]["spec"]["runAsNonRoot"] = True  # belongs in securityContext
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSIONS[-1], strict=True)


def test_only_the_ci_values_render_the_example_cluster() -> None:
    assert [o for o in render() if is_custom(o)] == []
    custom = [o for o in render((CI_VALUES,)) if is_custom(o)]
    assert [(o["kind"], o["metadata"]["name"]) for o in custom] == [("InferenceCluster", "llama")]


def test_the_helm_test_runs_with_the_operators_service_account() -> None:
    objects = render()
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == account
    steps = [c["args"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]]
    assert steps[:2] == [
        ["get", "inferenceclusters.kvferry.io", "--all-namespaces"],
        ["get", "workerpools.kvferry.io", "--all-namespaces"],
    ]


def test_the_helm_test_steps_are_valid_kubectl_commands() -> None:
    """Each step parses with a kubectl of the image's version (`--help` stops before any
    API call), so a misspelt flag fails here, not in someone's cluster."""
    pod = one(render(), "Pod")
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        args = [a for a in container["args"] if a.startswith("-")]
        verb = [a for a in container["args"] if not a.startswith("-")][:2]
        if verb[0] == "get":
            verb = verb[:1]
        result = subprocess.run(
            [str(KUBECTL), *verb, *args, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (container["name"], result.stderr)


BAD_VALUES: list[tuple[str, str]] = [
    ("unknown top-level key", "replicaCount=2"),
    ("unknown operator key", "operator.logLevel=debug"),
    ("bad pull policy", "image.pullPolicy=Sometimes"),
    ("zero interval", "operator.statusIntervalSeconds=0"),
    ("bad namespace", "operator.watchNamespaces[0]=Not_A_Namespace"),
]


@pytest.mark.parametrize(("name", "item"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_schema_rejects(name: str, item: str) -> None:
    result = helm(*template_args(sets=(item,)), check=False)
    assert result.returncode != 0, name
    assert "schema" in result.stderr.lower(), result.stderr


def test_namespace_scoped_watch_and_settings_reach_the_operator() -> None:
    dep = one(render((CI_VALUES,)), "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--namespace=kvferry-system" in container["args"]
    assert "--namespace=serving" in container["args"]
    env: dict[str, Any] = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVFERRY_STATUS_INTERVAL_S"] == "10"
    assert env["KVFERRY_RETRY_DELAY_S"] == "5"
    # Unset values leave the operator's own defaults (OperatorConfig) in charge.
    (default,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in default["env"]}
    assert not names & {"KVFERRY_STATUS_INTERVAL_S", "KVFERRY_RETRY_DELAY_S"}
