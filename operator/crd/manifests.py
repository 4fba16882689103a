"""The CustomResourceDefinitions, built from the spec/status dataclasses."""

from __future__ import annotations

from typing import Any

from kvferry.operator.crd.schema import schema_of
from kvferry.operator.crd.spec import GROUP, VERSION, InferenceClusterSpec
from kvferry.operator.crd.status import InferenceClusterStatus, WorkerPoolStatus
from kvferry.operator.crd.workerpool import WorkerPoolSpec

INFERENCE_CLUSTER_PLURAL = "inferenceclusters"
WORKER_POOL_PLURAL = "workerpools"
CATEGORY = "kvferry"


def _root_schema(spec: type[Any], status: type[Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema_of(spec),
            "status": schema_of(status),
        },
    }


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kvferry"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def inference_cluster_crd() -> dict[str, Any]:
    return _crd(
        kind="InferenceCluster",
        plural=INFERENCE_CLUSTER_PLURAL,
        short_names=["ic", "infc"],
        schema=_root_schema(
            InferenceClusterSpec,
            InferenceClusterStatus,
            "A disaggregated LLM serving cluster (router, prefill pool, decode pool).",
        ),
        columns=[
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "priority": 1,
            },
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
            {"name": "Prefill", "type": "integer", "jsonPath": ".status.prefill.ready"},
            {"name": "Decode", "type": "integer", "jsonPath": ".status.decode.ready"},
            {"name": "TTFT(ms)", "type": "number", "jsonPath": ".status.observed.ttftMs"},
            {"name": "TPOT(ms)", "type": "number", "jsonPath": ".status.observed.tpotMs"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={"status": {}},
    )


def worker_pool_crd() -> dict[str, Any]:
    return _crd(
        kind="WorkerPool",
        plural=WORKER_POOL_PLURAL,
        short_names=["wp"],
        schema=_root_schema(
            WorkerPoolSpec,
            WorkerPoolStatus,
            "One pool of an InferenceCluster; scale it with `kubectl scale`, an HPA or KEDA.",
        ),
        columns=[
            {"name": "Cluster", "type": "string", "jsonPath": ".spec.cluster"},
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
    )


def all_crds() -> list[dict[str, Any]]:
    return [inference_cluster_crd(), worker_pool_crd()]
