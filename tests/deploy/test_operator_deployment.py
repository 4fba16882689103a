"""The rendered operator Deployment: secure defaults, the command the image provides,
probes on kopf's liveness endpoint, and the non-root user the worker pods also use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvferry.operator.desired import pods
from tests.deploy.chart import CI_VALUES, ROOT, one, render

VALUES: dict[str, tuple[Path, ...]] = {"default": (), "ci": (CI_VALUES,)}


def _pod(values: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = one(render(values), "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_secure_defaults(values: tuple[Path, ...]) -> None:
    spec, container = _pod(values)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == pods.RUN_AS
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The only writable path is an emptyDir at /tmp (HOME points there).
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]


def test_runs_the_operator_with_a_probed_liveness_endpoint() -> None:
    spec, container = _pod(())
    assert container["command"] == ["python", "-m", "kvferry.operator"]
    assert "--standalone" in container["args"]  # one replica, no kopf peering objects
    (liveness,) = [a for a in container["args"] if a.startswith("--liveness=")]
    (port,) = container["ports"]
    assert liveness == f"--liveness=http://0.0.0.0:{port['containerPort']}/healthz"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    dep = one(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["automountServiceAccountToken"] is True
    account = one(render(), "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]


def test_clusters_default_to_the_operators_image() -> None:
    _, container = _pod(())
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVFERRY_DEFAULT_IMAGE"] == container["image"]


def test_dockerfile_matches_what_the_pods_run() -> None:
    """One image: the user the pods run as, the `kvferry` entry point of router and
    worker pods (operator/desired/pods.py), and the operator's module."""
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert f"USER {pods.RUN_AS}:{pods.RUN_AS}" in lines
    assert 'ENTRYPOINT ["kvferry"]' in lines
    assert "[operator]" in dockerfile
    assert dockerfile.splitlines()[0].startswith("# syntax=")
