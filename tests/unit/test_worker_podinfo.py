"""The downward-API annotations file: Go-quoted values, the `kvferry.io/topology` JSON, and
bad content reported and ignored (never an exception)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kvferry.services.worker.podinfo import (
    TOPOLOGY_ANNOTATION,
    operator_labels_from_text,
    parse_annotations,
    read_operator_labels,
    unquote_go,
)


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ('""', ""),
        ('"plain"', "plain"),
        (r'"{\"node\":\"gpu-7\"}"', '{"node":"gpu-7"}'),
        (r'"a\\b"', "a\\b"),
        (r'"tab\there\nnewline"', "tab\there\nnewline"),
        (r'"\a\b\f\r\v"', "\a\b\f\r\v"),
        (r'"\x41\x42"', "AB"),
        (r'"\xc3\xa9"', "é"),  # \x escapes are bytes of UTF-8
        (r'"\u00e9\U0001F600"', "é\U0001f600"),
        (r'"\101"', "A"),  # octal
        ('"héllo"', "héllo"),  # printable non-ASCII is written as is
    ],
)
def test_unquote_go(quoted: str, value: str) -> None:
    assert unquote_go(quoted) == value


@pytest.mark.parametrize(
    "bad",
    ["plain", '"open', r'"a\"', r'"\q"', r'"\x4"', r'"\uD800"', r'"\400"', '"a"b"'],
)
def test_unquote_go_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        unquote_go(bad)


def test_unquote_go_round_trips_json_quoting() -> None:
    """JSON string escapes are a subset of Go's (BMP, no surrogates): a reference quoter."""
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x20)] + list('"\\/{}:, az09é€') + ["\u2028", "\x7f"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert unquote_go(json.dumps(text)) == text
        assert unquote_go(json.dumps(text, ensure_ascii=False)) == text


def _line(key: str, value: str) -> str:
    return f"{key}={json.dumps(value)}"


def test_parse_annotations_skips_bad_lines() -> None:
    text = "\n".join(
        [
            _line("kubernetes.io/config.seen", "2026-01-01T00:00:00Z"),
            "no-equals-sign",
            'broken="unterminated',
            "",
            _line(TOPOLOGY_ANNOTATION, '{"zone":"z1"}'),
        ]
    )
    annotations, problems = parse_annotations(text)
    assert annotations == {
        "kubernetes.io/config.seen": "2026-01-01T00:00:00Z",
        TOPOLOGY_ANNOTATION: '{"zone":"z1"}',
    }
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3"]


def test_operator_labels() -> None:
    value = json.dumps({"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"})
    got = operator_labels_from_text(_line("other", "x") + "\n" + _line(TOPOLOGY_ANNOTATION, value))
    assert got.labels == {"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"}
    assert got.note == "labels from the operator"
    assert got.problem == ""


def test_no_annotation_yet_is_waiting_not_a_problem() -> None:
    got = operator_labels_from_text(_line("kubernetes.io/config.seen", "x"))
    assert got.labels == {}
    assert got.note == f"waiting for the operator's {TOPOLOGY_ANNOTATION} annotation"
    assert got.problem == ""


@pytest.mark.parametrize(
    ("value", "labels", "problem"),
    [
        ("{not json", {}, "is not valid JSON"),
        ('["zone"]', {}, "is not a JSON object"),
        # an older operator's raw node-label keys: ignored one by one, canonical ones kept
        (
            '{"node": "n", "nvidia.com/gpu.clique": "c", "zone": 3, "rack": " "}',
            {"node": "n"},
            "ignoring key 'nvidia.com/gpu.clique'",
        ),
    ],
)
def test_malformed_annotation_is_ignored_with_a_problem(
    value: str, labels: dict[str, str], problem: str
) -> None:
    got = operator_labels_from_text(_line(TOPOLOGY_ANNOTATION, value))
    assert got.labels == labels
    assert problem in got.problem


def test_read_operator_labels_from_disk(tmp_path: Path) -> None:
    missing = read_operator_labels(str(tmp_path))
    assert missing.labels == {} and "cannot read" in missing.problem
    (tmp_path / "annotations").write_text(
        _line(TOPOLOGY_ANNOTATION, '{"rack":"r1"}') + "\n", encoding="utf-8"
    )
    assert read_operator_labels(str(tmp_path)).labels == {"rack": "r1"}
