"""`kvferry worker --label ... --podinfo-dir DIR` as a real process: `kvferry status` shows
its labels and their source (and, on a machine without NVML, why NVML told nothing); once
DIR/annotations gains the operator's labels the worker registers them; a bad `--label`
fails with a message naming the allowed keys."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry.local_cluster import LocalCluster

KVFERRY = [sys.executable, "-m", "kvferry"]


def _status(address: str) -> str:
    result = subprocess.run(
        [*KVFERRY, "status", "--target", address], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _nvml_installed() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_status_shows_flag_then_operator_labels(tmp_path: Path) -> None:
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / "annotations").write_text('kubernetes.io/config.seen="2026-01-01"\n')
    cluster = LocalCluster(
        prefill=0,
        decode=1,
        port=0,
        log_dir=tmp_path / "logs",
        router_args=["--heartbeat-interval-s", "0.3", "--worker-ttl-s", "3"],
        worker_args=[
            "--num-kv-blocks=16",
            "--max-model-len=128",
            "--label=rack=r1",
            "--label",
            "node=n1",
            f"--podinfo-dir={podinfo}",
        ],
    )
    with cluster:  # starts it; stops every process on the way out
        out = _status(cluster.address)
        assert "node=n1,rack=r1 (flags)" in out, out
        if not _nvml_installed():
            assert "topology: NVML not found (NVMLError_LibraryNotFound)" in out, out
        assert "waiting for the operator's kvferry.io/topology annotation" in out, out

        value = json.dumps({"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"})
        (podinfo / "annotations").write_text(
            f'kubernetes.io/config.seen="2026-01-01"\nkvferry.io/topology={json.dumps(value)}\n'
        )
        with grpc.insecure_channel(cluster.address) as channel:
            stub = gen_grpc.GenerationStub(channel)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 30
            source = ""
            while time.monotonic() < deadline:
                status = stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=5)
                source = status.workers[0].topology_source
                if source != "flags":
                    break
                time.sleep(0.1)
        assert source == "flags+operator"
        out = _status(cluster.address)
        # flags win (node, rack); the operator adds the NVLink domain and the zone
        assert "node=n1,nvlink_domain=c1.3,rack=r1,zone=z1 (flags+operator)" in out, out


def test_bad_label_flag_names_the_allowed_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KVFERRY, "worker", "--label", "gpu.clique=x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "--label key 'gpu.clique' is not a topology level; use one of node, nvlink_domain,"
        " rack, zone" in result.stderr
    )
