"""The operator's topology labels, read from the pod's downward-API annotations file.

The operator patches each worker pod, once it is scheduled, with the annotation
`kvferry.io/topology`: JSON with canonical keys (`{"node": "gpu-7", "nvlink_domain":
"c1.3", "zone": "z1"}`). The kubelet writes the pod's annotations to `DIR/annotations`,
one `key="value"` line each, the value quoted like a Go string literal, and rewrites the
file when they change, so the worker reads it again from time to time.

Parsing is pure; `read_operator_labels` is the only function that touches the disk.
Nothing here raises on bad content: a malformed file or annotation is reported in
`OperatorLabels.problem` and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kvferry.topology import LABEL_KEYS

TOPOLOGY_ANNOTATION = "kvferry.io/topology"
ANNOTATIONS_FILE = "annotations"

_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True, slots=True)
class OperatorLabels:
    labels: dict[str, str] = field(default_factory=dict)
    note: str = ""
    """Where things stand, for `topology_detail` (e.g. still waiting for the operator)."""
    problem: str = ""
    """Something wrong with the file or annotation (logged as a warning); empty if none."""


def unquote_go(text: str) -> str:
    """The value of a double-quoted Go string literal (as `strconv.Quote` / `%q` write it).

    Raises ValueError on a literal that is not closed or has an unknown escape.
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"not a quoted string: {text[:40]!r}")
    out = bytearray()  # NOTE: \xNN escapes are raw bytes, so decode UTF-8 at the end
    body, i = text[1:-1], 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            raise ValueError("unescaped quote inside the string")
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("string ends with a lone backslash")
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[esc].encode("utf-8")
            i += 2
        elif esc in _HEX_WIDTH:
            digits = body[i + 2 : i + 2 + _HEX_WIDTH[esc]]
            if len(digits) != _HEX_WIDTH[esc] or not _is_hex(digits):
                raise ValueError(f"bad \\{esc} escape")
            value = int(digits, 16)
            out += bytes([value]) if esc == "x" else _code_point(value).encode("utf-8")
            i += 2 + _HEX_WIDTH[esc]
        elif esc in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("bad octal escape")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return out.decode("utf-8", errors="replace")


def _is_hex(digits: str) -> bool:
    return all(d in "0123456789abcdefABCDEF" for d in digits)


def _code_point(value: int) -> str:
    if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        raise ValueError(f"invalid code point {value:#x}")
    return chr(value)


def parse_annotations(text: str) -> tuple[dict[str, str], list[str]]:
    """A downward-API `annotations` file -> ({key: value}, [problems with lines skipped])."""
    annotations: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        try:
            if not sep or not key:
                raise ValueError('expected key="value"')
            annotations[key] = unquote_go(quoted)
        except ValueError as err:
            problems.append(f"line {number}: {err}")
    return annotations, problems


def labels_from_annotation(value: str) -> tuple[dict[str, str], list[str]]:
    """The `kvferry.io/topology` JSON -> (canonical labels, [problems with what was skipped])."""
    try:
        data = json.loads(value)
    except ValueError as err:
        return {}, [f"{TOPOLOGY_ANNOTATION} is not valid JSON ({err})"]
    if not isinstance(data, dict):
        return {}, [f"{TOPOLOGY_ANNOTATION} is not a JSON object"]
    labels: dict[str, str] = {}
    problems: list[str] = []
    for key, level in data.items():
        if key not in LABEL_KEYS:
            problems.append(
                f"{TOPOLOGY_ANNOTATION}: ignoring key {key!r} (not one of {', '.join(LABEL_KEYS)})"
            )
        elif not isinstance(level, str) or not level.strip():
            problems.append(f"{TOPOLOGY_ANNOTATION}: ignoring {key!r}: not a non-empty string")
        else:
            labels[key] = level.strip()
    return labels, problems


def operator_labels_from_text(text: str) -> OperatorLabels:
    annotations, problems = parse_annotations(text)
    value = annotations.get(TOPOLOGY_ANNOTATION)
    if value is None:
        return OperatorLabels(
            note=f"waiting for the operator's {TOPOLOGY_ANNOTATION} annotation",
            problem="; ".join(problems),
        )
    labels, more = labels_from_annotation(value)
    problems += more
    note = "labels from the operator" if labels else f"{TOPOLOGY_ANNOTATION} has no usable labels"
    return OperatorLabels(labels=labels, note=note, problem="; ".join(problems))


def read_operator_labels(podinfo_dir: str) -> OperatorLabels:
    """Read `podinfo_dir/annotations`; a missing or unreadable file is a problem, not an error."""
    path = Path(podinfo_dir) / ANNOTATIONS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return OperatorLabels(
            note=f"no annotations file at {path}",
            problem=f"cannot read {path}: {err.strerror or err}",
        )
    return operator_labels_from_text(text)
