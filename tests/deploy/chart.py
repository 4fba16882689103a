"""Run the real `helm` (from the venv's bin/, put there by `make setup`) on the chart and
hand back the rendered objects; read the generated CRDs' schemas."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kvferry"
CI_VALUES = Path(__file__).with_name("ci-values.yaml")
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
HELM_TIMEOUT_S = 60
"""A helm run takes about a second; this bounds a hung one."""
RELEASE = "kvferry"
NAMESPACE = "kvferry-system"
KUBE_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
kubernetes-validate ships schemas for."""
CUSTOM_GROUP = "kvferry.io"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=check
    )


def template_args(
    values: tuple[Path, ...] = (), sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[-1]
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kube_version, "--include-crds"]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


@functools.cache
def render(
    values: tuple[Path, ...] = (), sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[-1]
) -> tuple[dict[str, Any], ...]:
    """Every object `helm template` renders (CRDs and the helm test pod included)."""
    out = helm(*template_args(values, sets, kube_version)).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def is_custom(obj: dict[str, Any]) -> bool:
    return str(obj["apiVersion"]).split("/")[0] == CUSTOM_GROUP


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the chart's generated CRD for `kind` (what users install)."""
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = crd["spec"]["versions"]
            return dict(version["schema"]["openAPIV3Schema"])
    raise KeyError(f"no CRD for {kind} in {CHART / 'crds'}")
