"""The discovery shell: NVML asked once (again only while its fabric registers, at most
every NVML_RETRY_S), the annotation file re-read on each refresh, a change reported once,
and each distinct problem with the file logged once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.podinfo import TOPOLOGY_ANNOTATION
from kvferry.services.worker.topology import NvmlKind, NvmlTopology
from kvferry.services.worker.topology_discovery import (
    NVML_RETRY_S,
    TopologyDiscovery,
    default_node,
    gpu_uuid,
)

NO_NVML = NvmlTopology(detail="NVML not found (NVMLError_LibraryNotFound)")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_annotation(folder: Path, value: str) -> None:
    line = f"{TOPOLOGY_ANNOTATION}={json.dumps(value)}\n"
    (folder / "annotations").write_text('kubernetes.io/config.seen="x"\n' + line)


def test_operator_labels_arrive_after_start(tmp_path: Path) -> None:
    (tmp_path / "annotations").write_text('kubernetes.io/config.seen="x"\n')
    probes: list[str | None] = []

    def probe(gpu: str | None, host: str) -> NvmlTopology:
        probes.append(gpu)
        return NO_NVML

    d = TopologyDiscovery(
        flags={"rack": "r9"}, podinfo_dir=str(tmp_path), gpu=None, node="host-a", probe=probe
    )
    assert dict(d.current.labels) == {"node": "host-a", "rack": "r9"}
    assert d.current.source == "flags"
    assert d.current.detail == (
        "NVML not found (NVMLError_LibraryNotFound);"
        f" waiting for the operator's {TOPOLOGY_ANNOTATION} annotation"
    )
    assert d.refresh() is False

    write_annotation(tmp_path, '{"node": "gpu-7", "rack": "r1", "zone": "z1"}')
    assert d.refresh() is True
    assert dict(d.current.labels) == {"node": "gpu-7", "rack": "r9", "zone": "z1"}
    assert d.current.source == "flags+operator"
    assert d.current.detail.endswith("labels from the operator")
    assert d.refresh() is False  # unchanged file: no second registration
    assert probes == [None]  # NVML asked once


def test_pending_fabric_is_asked_again_but_not_too_often() -> None:
    clock = Clock()
    answers = [
        NvmlTopology(detail="GPU fabric registration not complete", pending=True),
        NvmlTopology("u.1", NvmlKind.CLIQUE, "NVML: GPU fabric clique u.1"),
    ]
    asked: list[float] = []

    def probe(gpu: str | None, host: str) -> NvmlTopology:
        asked.append(clock.now)
        return answers[min(len(asked) - 1, 1)]

    d = TopologyDiscovery(flags={}, podinfo_dir="", gpu="GPU-a", node="h", probe=probe, clock=clock)
    assert d.current.source == "none"
    clock.now = NVML_RETRY_S - 1
    assert d.refresh() is False
    clock.now = NVML_RETRY_S
    assert d.refresh() is True
    assert d.current.labels["nvlink_domain"] == "u.1" and d.current.source == "nvml"
    clock.now = 10 * NVML_RETRY_S
    assert d.refresh() is False
    assert asked == [0.0, NVML_RETRY_S]  # not pending any more: never asked again


def test_a_bad_annotation_is_logged_once_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_annotation(tmp_path, "{oops")
    with caplog.at_level(logging.WARNING):
        d = TopologyDiscovery(
            flags={}, podinfo_dir=str(tmp_path), gpu=None, node="h", probe=lambda g, h: NO_NVML
        )
        for _ in range(3):
            assert d.refresh() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is not valid JSON" in warnings[0].getMessage()
    assert dict(d.current.labels) == {"node": "h"}


def test_flag_node_names_the_host_local_domain() -> None:
    hosts: list[str] = []

    def probe(gpu: str | None, host: str) -> NvmlTopology:
        hosts.append(host)
        return NO_NVML

    TopologyDiscovery(flags={"node": "n1"}, podinfo_dir="", gpu=None, node="h", probe=probe)
    assert hosts == ["n1"]


def test_defaults() -> None:
    assert default_node({"NODE_NAME": "gpu-7"}, "pod-abc") == "gpu-7"
    assert default_node({"NODE_NAME": " "}, "pod-abc") == "pod-abc"
    assert default_node({}, "laptop") == "laptop"
    assert gpu_uuid(torch.device("cpu")) is None


def test_start_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NVIDIA driver here: a clean fallback that says why."""
    monkeypatch.setenv("NODE_NAME", "node-x")
    write_annotation(tmp_path, '{"zone": "z1"}')
    d = TopologyDiscovery.start(
        WorkerConfig(labels={"rack": "r1"}, podinfo_dir=str(tmp_path)), torch.device("cpu")
    )
    assert dict(d.current.labels) == {"node": "node-x", "rack": "r1", "zone": "z1"}
    assert d.current.source == "flags+operator"
    assert d.current.detail.startswith(("NVML not found", "NVML found, but"))
