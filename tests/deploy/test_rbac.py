"""The ClusterRole grants exactly what the operator uses: every (group, resource, verb)
derived from the code — the `api.*` calls and kopf decorators in operator/handlers.py,
the objects `desired()` applies — plus kopf's own needs, and nothing more; no wildcard."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from typing import Any

from kvferry.operator import apply, handlers
from kvferry.operator.crd.schema import parse
from kvferry.operator.crd.spec import InferenceClusterSpec
from kvferry.operator.desired.naming import ClusterRef
from kvferry.operator.desired.objects import Observed, desired
from tests.deploy.chart import one, render

Triple = tuple[str, str, str]
"""(API group, resource[/subresource], verb)."""

KOPF_FRAMEWORK: set[Triple] = {
    # kopf's resource observer lists and watches CRDs (kopf/_core/reactor/observation.py).
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    # kopf posts Events for handler failures (settings.posting), and `kopf.event()`.
    ("", "events", "create"),
}
"""Needs of kopf itself, run clusterwide and --standalone (no peering objects)."""

API_VERBS = {"get": "get", "list": "list", "merge_patch": "patch"}
"""`KubeApi` methods called directly in handlers.py → the verb they use."""
APPLY_VERBS = ("get", "create", "patch")
"""`apply_all`: GET, then server-side apply (PATCH), which creates a missing object
(SSA needs create for that; the 404 fallback POSTs)."""
KOPF_WATCH_VERBS = ("list", "watch")
KOPF_CHANGE_DECORATORS = {"create", "update", "resume", "delete", "timer", "daemon"}
"""Handlers kopf keeps state for: it patches the object (finalizers, progress and
diff-base annotations)."""


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _value(node: ast.expr, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id] if node.id in names else getattr(handlers, node.id)
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, names) for e in node.elts)
    raise TypeError(f"cannot resolve {ast.dump(node)} at line {node.lineno}")


def _tree() -> ast.Module:
    return ast.parse(inspect.getsource(handlers))


def _local_tuples(tree: ast.Module) -> dict[str, Any]:
    """`ic = (GROUP, VERSION, PLURAL)` and the like inside `register`."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            (target,) = node.targets
            if isinstance(target, ast.Name):
                names[target.id] = _value(node.value, names)
    return names


def _api_calls(tree: ast.Module) -> Iterator[Triple]:
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "api"
            and node.func.attr in API_VERBS
        ):
            continue
        api_version, kind = _value(node.args[0], {}), _value(node.args[1], {})
        resource = apply.PLURALS[kind]
        sub = node.args[5] if len(node.args) > 5 else None
        sub = next((k.value for k in node.keywords if k.arg == "subresource"), sub)
        if sub is not None:
            resource = f"{resource}/{_value(sub, {})}"
        yield _group(api_version), resource, API_VERBS[node.func.attr]


def _kopf_handlers(tree: ast.Module) -> Iterator[Triple]:
    names = _local_tuples(tree)
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.AsyncFunctionDef):
            continue
        source = ast.unparse(fn)
        for deco in fn.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).startswith("kopf.")):
                continue
            kind = ast.unparse(deco.func).rpartition(".")[2]
            args: list[Any] = []
            for a in deco.args:
                if isinstance(a, ast.Starred):
                    args += list(_value(a.value, names))
                else:
                    args.append(_value(a, names))
            if not args:
                continue  # startup/cleanup: no resource
            group, resource = ("", args[1]) if len(args) == 2 else (args[0], args[2])
            group = _group(group) if len(args) == 2 else group
            for verb in KOPF_WATCH_VERBS:
                yield group, resource, verb
            if kind in KOPF_CHANGE_DECORATORS:
                yield group, resource, "patch"
            if "patch.status" in source or "_set_status(patch" in source:
                yield group, f"{resource}/status", "patch"
    if "kopf.event(" in inspect.getsource(handlers):
        yield "", "events", "create"


def _applied() -> Iterator[Triple]:
    """What `apply_all(api, desired(...))` writes, for a cluster using every option."""
    spec = parse(
        InferenceClusterSpec,
        {
            "model": {"name": "m", "source": {"preset": "tiny"}},
            "router": {"serviceType": "LoadBalancer"},
        },
    )
    assert "apply_all(api, desired(" in inspect.getsource(handlers)
    for obj in desired(ClusterRef("c", "ns", "uid"), spec, Observed(image="i")):
        for verb in APPLY_VERBS:
            yield _group(obj["apiVersion"]), apply.PLURALS[obj["kind"]], verb
        for owner in obj["metadata"].get("ownerReferences", []):
            if owner.get("blockOwnerDeletion"):
                # OwnerReferencesPermissionEnforcement: update on the owner's finalizers.
                plural = apply.PLURALS[owner["kind"]]
                yield _group(owner["apiVersion"]), f"{plural}/finalizers", "update"


def expected() -> set[Triple]:
    tree = _tree()
    return {*_api_calls(tree), *_kopf_handlers(tree), *_applied(), *KOPF_FRAMEWORK}


def granted() -> tuple[set[Triple], list[dict[str, Any]]]:
    role = one(render(), "ClusterRole")
    triples = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    return triples, role["rules"]


def test_derivation_sees_the_operators_calls() -> None:
    """The AST walk is not vacuous: it finds the calls the handlers are known to make."""
    tree = _tree()
    calls = set(_api_calls(tree))
    assert ("", "nodes", "get") in calls
    assert ("", "pods", "patch") in calls
    assert ("kvferry.io", "workerpools/status", "patch") in calls
    watched = set(_kopf_handlers(tree))
    assert ("kvferry.io", "inferenceclusters", "watch") in watched
    assert ("kvferry.io", "inferenceclusters/status", "patch") in watched
    assert ("", "pods", "watch") in watched
    assert ("", "pods", "patch") not in watched  # an event handler keeps no state


def test_cluster_role_is_exactly_what_the_operator_uses() -> None:
    have, _ = granted()
    want = expected()
    assert sorted(want - have) == [], "the operator needs these: add them to clusterrole.yaml"
    assert sorted(have - want) == [], "granted but unused: remove them from clusterrole.yaml"


def test_no_wildcards() -> None:
    _, rules = granted()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no nonResourceURLs
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[key]), rule


def test_binding_grants_the_role_to_the_operators_account() -> None:
    objects = render()
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    (subject,) = binding["subjects"]
    dep = one(objects, "Deployment")
    assert subject == {
        "kind": "ServiceAccount",
        "name": dep["spec"]["template"]["spec"]["serviceAccountName"],
        "namespace": dep["metadata"]["namespace"],
    }
