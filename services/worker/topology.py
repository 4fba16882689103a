"""Where this worker sits: its canonical topology labels (`kvferry.topology`), merged from
the sources it can ask, and a note on how it got them. Pure: no I/O.

Sources, each canonical key taken from the first that has it:

- `node`: a `--label node=` flag; the operator's annotation; else `NODE_NAME` (the
  Kubernetes downward API) or the hostname.
- `nvlink_domain`: a flag; the GPU fabric clique NVML reports (a multi-node NVLink
  domain, hardware truth); the operator's annotation (the node's clique label); the
  NVLink peers NVML sees on this host (a host-local domain).
- `rack`, `zone`: a flag; the operator's annotation (the admin's node labels).

Explicit flags always win. `topology_source` names the sources that contributed a label,
in the fixed order `flags+operator+nvml` (e.g. `operator+nvml`), or `none` when only the
default node name is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from kvferry.topology import LABEL_KEYS, NODE, NVLINK_DOMAIN, RACK, ZONE


class Source(Enum):
    FLAGS = "flags"
    OPERATOR = "operator"
    NVML = "nvml"


class NvmlKind(Enum):
    """What NVML could say about the GPU's NVLink domain."""

    NONE = "none"
    CLIQUE = "clique"
    """A GPU fabric clique (`<clusterUuid>.<cliqueId>`, as GPU feature discovery labels it)."""
    PEERS = "peers"
    """GPUs (or NVSwitches) reachable over active NVLinks on this host."""


@dataclass(frozen=True, slots=True)
class NvmlTopology:
    """What the NVML probe found."""

    domain: str = ""
    kind: NvmlKind = NvmlKind.NONE
    detail: str = ""
    """Human-readable: what was found, or why nothing was (e.g. NVML not found)."""
    pending: bool = False
    """The GPU fabric is still registering: asking again later may find a clique."""

    def __post_init__(self) -> None:
        if (self.kind is NvmlKind.NONE) != (not self.domain):
            raise ValueError(f"an NVML domain needs a kind and vice versa: {self!r}")


@dataclass(frozen=True, slots=True)
class Topology:
    """What the worker registers: labels, where they came from, and a note."""

    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = "none"
    detail: str = ""


_PRECEDENCE: dict[str, tuple[str, ...]] = {
    NODE: ("flags", "operator"),
    NVLINK_DOMAIN: ("flags", "nvml-clique", "operator", "nvml-peers"),
    RACK: ("flags", "operator"),
    ZONE: ("flags", "operator"),
}
_SOURCE_OF = {
    "flags": Source.FLAGS,
    "operator": Source.OPERATOR,
    "nvml-clique": Source.NVML,
    "nvml-peers": Source.NVML,
}


def validate_labels(labels: Mapping[str, str], what: str = "label") -> None:
    """Raise ValueError unless every key is a canonical level and every value non-empty."""
    for key, value in labels.items():
        if key not in LABEL_KEYS:
            raise ValueError(
                f"{what} key {key!r} is not a topology level; use one of {', '.join(LABEL_KEYS)}"
            )
        if not value or value != value.strip():
            raise ValueError(f"{what} {key!r} needs a non-empty value without spaces around it")


def parse_label_flags(values: Iterable[str]) -> dict[str, str]:
    """`["rack=r1", "zone=z1"]` (repeated `--label KEY=VALUE`) -> `{"rack": "r1", ...}`."""
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--label takes KEY=VALUE (e.g. rack=r1), got {item!r}")
        key = key.strip()
        if key in labels:
            raise ValueError(f"--label {key} given twice")
        labels[key] = value.strip()
    validate_labels(labels, "--label")
    return labels


def merge(
    *,
    flags: Mapping[str, str],
    operator: Mapping[str, str],
    nvml: NvmlTopology,
    default_node: str,
    notes: Iterable[str] = (),
) -> Topology:
    """Each key from its first source in `_PRECEDENCE` (see the module docstring).

    `notes` (e.g. the annotation file's state) join NVML's detail in `Topology.detail`.
    """
    candidates: dict[str, Mapping[str, str]] = {
        "flags": flags,
        "operator": operator,
        "nvml-clique": {NVLINK_DOMAIN: nvml.domain} if nvml.kind is NvmlKind.CLIQUE else {},
        "nvml-peers": {NVLINK_DOMAIN: nvml.domain} if nvml.kind is NvmlKind.PEERS else {},
    }
    labels: dict[str, str] = {}
    used: set[Source] = set()
    for key in LABEL_KEYS:
        for name in _PRECEDENCE[key]:
            value = candidates[name].get(key, "")
            if value:
                labels[key] = value
                used.add(_SOURCE_OF[name])
                break
    if NODE not in labels and default_node:
        labels[NODE] = default_node  # a default, not a source
    source = "+".join(s.value for s in Source if s in used) or "none"
    detail = "; ".join(n for n in (nvml.detail, *notes) if n)
    return Topology(labels=labels, source=source, detail=detail)
