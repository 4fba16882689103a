"""Small builders for operator tests: specs, resources, references."""

from __future__ import annotations

import copy
from typing import Any

from kvferry.operator.crd.schema import parse
from kvferry.operator.crd.spec import InferenceClusterSpec
from kvferry.operator.desired.naming import ClusterRef

BASE: dict[str, Any] = {
    "model": {"name": "llama-3-8b", "source": {"pvc": {"claimName": "models", "subPath": "llama"}}},
    "prefill": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
    "decode": {"replicas": 3, "minReplicas": 1, "maxReplicas": 6},
}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """BASE with top-level keys replaced (deep-copied so tests never share state)."""
    out = copy.deepcopy(BASE)
    out.update(copy.deepcopy(overrides))
    return out


def spec(**overrides: Any) -> InferenceClusterSpec:
    return parse(InferenceClusterSpec, spec_dict(**overrides))


def ref(name: str = "demo", namespace: str = "serving") -> ClusterRef:
    return ClusterRef(name=name, namespace=namespace, uid=f"uid-{name}", generation=1)


def resource(name: str = "demo", namespace: str = "serving", **overrides: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kvferry.io/v1alpha1",
        "kind": "InferenceCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec_dict(**overrides),
    }
