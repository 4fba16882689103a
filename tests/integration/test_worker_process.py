"""`kvferry worker` as a real process: serves, answers health and stats, drains on
SIGTERM and exits cleanly; bad flags fail with a message naming the fix."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc

KVFERRY = [sys.executable, "-c", "import sys; from kvferry.cli import main; sys.exit(main())"]


def test_worker_serves_then_exits_on_sigterm(tmp_path: Path) -> None:
    args = ["worker", "--role", "decode", "--num-kv-blocks", "16", "--max-model-len", "128"]
    proc = subprocess.Popen(
        [*KVFERRY, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is up (or the process died)
        assert "serving on" in line, proc.stderr.read() if proc.stderr else line
        address = line.split()[-1]

        async def probe() -> tuple[int, int]:
            async with grpc.aio.insecure_channel(address) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                stats = await pb_grpc.WorkerStub(channel).GetStats(
                    pb.WorkerStatsRequest(), timeout=10
                )
                return health.status, stats.load.total_kv_blocks

        status, blocks = asyncio.run(probe())
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert blocks == 16
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "kvferry worker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bad_flag_fails_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KVFERRY, "worker", "--role", "chef"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "role must be one of prefill, decode, mixed" in result.stderr
