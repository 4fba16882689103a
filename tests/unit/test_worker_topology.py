"""A worker's topology labels: `--label` parsing and the precedence of flags, the
operator's annotation and NVML, key by key (table-driven), plus the reported source."""

from __future__ import annotations

import pytest

from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.topology import (
    NvmlKind,
    NvmlTopology,
    merge,
    parse_label_flags,
)

CLIQUE = NvmlTopology("c0ffee00-0000-0000-0000-000000000001.3", NvmlKind.CLIQUE, "clique")
PEERS = NvmlTopology("host-a/nvl:abc", NvmlKind.PEERS, "peers")
NO_NVML = NvmlTopology(detail="NVML not found (NVMLError_LibraryNotFound)")


@pytest.mark.parametrize(
    ("flags", "operator", "nvml", "labels", "source"),
    [
        # nothing known: only the default node, and the source says so
        ({}, {}, NO_NVML, {"node": "host-a"}, "none"),
        # flags alone
        (
            {"rack": "r1", "nvlink_domain": "d9"},
            {},
            NO_NVML,
            {"node": "host-a", "nvlink_domain": "d9", "rack": "r1"},
            "flags",
        ),
        # operator alone: its node name replaces the default
        (
            {},
            {"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"},
            NO_NVML,
            {"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"},
            "operator",
        ),
        # NVML's fabric clique beats the operator's domain; the operator keeps rack/zone
        (
            {},
            {"node": "gpu-7", "nvlink_domain": "stale", "rack": "r2"},
            CLIQUE,
            {"node": "gpu-7", "nvlink_domain": CLIQUE.domain, "rack": "r2"},
            "operator+nvml",
        ),
        # the operator's domain beats a host-local NVLink-peers guess
        (
            {},
            {"nvlink_domain": "admin-d1", "zone": "z1"},
            PEERS,
            {"node": "host-a", "nvlink_domain": "admin-d1", "zone": "z1"},
            "operator",
        ),
        # NVLink peers used when nobody else names a domain
        (
            {},
            {"zone": "z1"},
            PEERS,
            {"node": "host-a", "nvlink_domain": PEERS.domain, "zone": "z1"},
            "operator+nvml",
        ),
        ({}, {}, CLIQUE, {"node": "host-a", "nvlink_domain": CLIQUE.domain}, "nvml"),
        # flags win over everything, key by key
        (
            {"nvlink_domain": "mine", "zone": "zf"},
            {"node": "gpu-7", "nvlink_domain": "op", "zone": "zo", "rack": "ro"},
            CLIQUE,
            {"node": "gpu-7", "nvlink_domain": "mine", "rack": "ro", "zone": "zf"},
            "flags+operator",
        ),
        (
            {"node": "n1", "nvlink_domain": "mine", "rack": "r", "zone": "z"},
            {"node": "gpu-7", "nvlink_domain": "op", "zone": "zo", "rack": "ro"},
            CLIQUE,
            {"node": "n1", "nvlink_domain": "mine", "rack": "r", "zone": "z"},
            "flags",
        ),
        # empty values never count
        ({}, {"rack": ""}, NO_NVML, {"node": "host-a"}, "none"),
    ],
)
def test_precedence(
    flags: dict[str, str],
    operator: dict[str, str],
    nvml: NvmlTopology,
    labels: dict[str, str],
    source: str,
) -> None:
    got = merge(flags=flags, operator=operator, nvml=nvml, default_node="host-a")
    assert dict(got.labels) == labels
    assert got.source == source


def test_detail_joins_nvml_and_operator_notes() -> None:
    got = merge(
        flags={},
        operator={"zone": "z1"},
        nvml=NO_NVML,
        default_node="h",
        notes=["labels from the operator", ""],
    )
    assert got.detail == "NVML not found (NVMLError_LibraryNotFound); labels from the operator"


def test_parse_label_flags() -> None:
    assert parse_label_flags([]) == {}
    assert parse_label_flags(["rack=r1", " zone = z-1 ", "nvlink_domain=a.b=c"]) == {
        "rack": "r1",
        "zone": "z-1",
        "nvlink_domain": "a.b=c",  # only the first '=' splits
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["rack"], "--label takes KEY=VALUE"),
        (["gpu=1"], "--label key 'gpu' is not a topology level; use one of node, nvlink_domain"),
        (["nvidia.com/gpu.clique=x"], "is not a topology level"),
        (["rack="], "--label 'rack' needs a non-empty value"),
        (["rack=a", "rack=b"], "--label rack given twice"),
    ],
)
def test_bad_label_flags(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_label_flags(values)


def test_worker_config_validates_labels() -> None:
    assert WorkerConfig(labels={"zone": "z1"}).labels == {"zone": "z1"}
    with pytest.raises(ValueError, match="'colour' is not a topology level"):
        WorkerConfig(labels={"colour": "blue"})


def test_nvml_topology_needs_kind_and_domain_together() -> None:
    with pytest.raises(ValueError):
        NvmlTopology("d", NvmlKind.NONE)
    with pytest.raises(ValueError):
        NvmlTopology("", NvmlKind.CLIQUE)
