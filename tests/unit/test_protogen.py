"""`python -m kvferry.protogen`: committed stubs are current, and staleness is caught."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvferry import protogen

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    # As CI runs it: a fresh interpreter, outside the repository.
    result = subprocess.run(
        [sys.executable, "-m", "kvferry.protogen", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_check_names_stale_files_in_a_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto_root, out = tmp_path / "proto", tmp_path / "out"
    shutil.copytree(ROOT / "proto", proto_root)
    args = ["--proto-root", str(proto_root), "--out", str(out)]
    assert protogen.main(args) == 0
    assert protogen.main([*args, "--check"]) == 0
    capsys.readouterr()

    kv = proto_root / "kvferry" / "v1" / "kvtransfer.proto"
    text = kv.read_text()
    kv.write_text(
        text.replace("  fixed32 crc32c = 9;", "  fixed32 crc32c = 9;\n  bool extra = 99;")
    )
    stray = out / "kvferry" / "v1" / "gone_pb2.py"
    stray.write_text("# left over from a deleted proto\n")

    assert protogen.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "kvtransfer_pb2.py" in err
    assert "kvtransfer_pb2.pyi" in err
    assert "gone_pb2.py" in err
    assert "worker_pb2.py" not in err  # only what changed

    assert protogen.main(args) == 0  # regenerating fixes it, removing the stray
    assert not stray.exists()
    assert protogen.main([*args, "--check"]) == 0


def test_output_is_deterministic_and_imports_are_package_relative() -> None:
    first = protogen.render(ROOT / "proto")
    assert first == protogen.render(ROOT / "proto")
    for rel, text in first.items():
        assert "from kvferry.v1 import" not in text, rel
        assert not re.search(r"'kvferry\.v1\.\w+_pb2'", text), rel
    assert Path("kvferry/v1/worker_pb2_grpc.py") in first
    assert Path("kvferry/__init__.py") in first


def test_generated_modules_import_with_the_contract() -> None:
    from kvferry._proto.kvferry.v1 import (
        generation_pb2,
        generation_pb2_grpc,
        kvtransfer_pb2,
        kvtransfer_pb2_grpc,
        worker_pb2,
        worker_pb2_grpc,
    )

    def methods(module: object, service: str) -> set[str]:
        return set(module.DESCRIPTOR.services_by_name[service].methods_by_name)  # type: ignore[attr-defined]

    assert methods(generation_pb2, "Generation") == {
        "Generate",
        "Abort",
        "ListModels",
        "GetClusterStatus",
    }
    assert methods(worker_pb2, "Worker") == {
        "Admit",
        "Prefill",
        "Decode",
        "Release",
        "GetStats",
        "Drain",
    }
    assert methods(worker_pb2, "Registry") == {"Register", "Heartbeat"}
    assert methods(kvtransfer_pb2, "KVTransfer") == {"PushKV"}
    for grpc_module in (generation_pb2_grpc, worker_pb2_grpc, kvtransfer_pb2_grpc):
        assert grpc_module.__name__.startswith("kvferry._proto.kvferry.v1.")
    assert worker_pb2.AdmitRequest.__module__ == "kvferry._proto.kvferry.v1.worker_pb2"


def _reachable_messages() -> tuple[set[str], set[str]]:
    """(every message in kvferry.v1, those an RPC's request or response reaches)."""
    from google.protobuf.descriptor import Descriptor, FieldDescriptor

    from kvferry._proto.kvferry.v1 import generation_pb2, kvtransfer_pb2, worker_pb2

    files = [m.DESCRIPTOR for m in (generation_pb2, kvtransfer_pb2, worker_pb2)]
    every: set[str] = set()
    for f in files:
        stack = list(f.message_types_by_name.values())
        while stack:
            d = stack.pop()
            if not d.GetOptions().map_entry:
                every.add(d.full_name)
            stack.extend(d.nested_types)
    seen: set[str] = set()

    def visit(d: Descriptor) -> None:
        if d.full_name in seen:
            return
        seen.add(d.full_name)
        for field in d.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                visit(field.message_type)

    for f in files:
        for service in f.services_by_name.values():
            for method in service.methods:
                visit(method.input_type)
                visit(method.output_type)
    return every, seen


def test_no_message_is_a_placeholder() -> None:
    every, reachable = _reachable_messages()
    assert every - reachable == set()


DECLARATION = (
    "message ",
    "enum ",
    "service ",
    "rpc ",
    "oneof ",
    "string ",
    "bytes ",
    "bool ",
    "uint32 ",
    "uint64 ",
    "fixed32 ",
    "float ",
    "double ",
    "repeated ",
    "optional ",
    "map<",
)


@pytest.mark.parametrize("name", ["generation.proto", "worker.proto", "kvtransfer.proto"])
def test_every_declaration_is_commented(name: str) -> None:
    lines = (ROOT / "proto" / "kvferry" / "v1" / name).read_text().splitlines()
    missing = []
    previous = ""
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        is_declaration = line.startswith(DECLARATION) or (
            line[:1].isupper() and "=" in line and line.endswith(";")  # an enum value
        )
        if is_declaration and not previous.startswith("//"):
            missing.append(f"{name}:{number}: {line}")
        if line:
            previous = line
    assert missing == []
