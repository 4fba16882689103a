"""A router and its workers as child processes on 127.0.0.1 (`kvferry up`, the README's demo,
the end-to-end tests and benchmarks).

    with LocalCluster(model="tiny", prefill=1, decode=1, port=0) as cluster:
        client = kvferry.Client(cluster.address)

Each child logs to its own file in `log_dir`. Start-up waits (bounded) for the router's
"serving" line and for every worker to register; a child that dies early fails the start
with the tail of its log. `stop()` sends SIGTERM (workers drain, then the router), waits,
and SIGKILLs what is left, so no child outlives the cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc

_SERVING = re.compile(r"kvferry router serving \S+ on (\S+)")
_POLL_S = 0.05


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (even by
    SIGKILL), so no child outlives `kvferry up`. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class ClusterStartError(RuntimeError):
    """A child process failed to start (its log's tail is in the message)."""


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalCluster:
    model: str = "tiny"
    prefill: int = 1
    decode: int = 1
    mixed: int = 0
    port: int = 50051
    """Router port on 127.0.0.1 (0 picks a free one)."""
    worker_args: Sequence[str] = ()
    """Extra `kvferry worker` flags (engine options such as --num-kv-blocks)."""
    router_args: Sequence[str] = ()
    log_dir: Path | None = None
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    address: str = ""
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("prefill", "decode", "mixed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.decode + self.mixed == 0:
            raise ValueError("a cluster needs a decode or mixed worker: pass --decode 1")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")

    @property
    def num_workers(self) -> int:
        return self.prefill + self.decode + self.mixed

    def start(self) -> LocalCluster:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="kvferry-up-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            router = self._spawn(
                "router",
                [
                    "router",
                    "--model",
                    self.model,
                    "--port",
                    str(self.port),
                    *self.router_args,
                ],
            )
            self.address = self._wait_for_router(router, deadline)
            for role in ("prefill", "decode", "mixed"):
                for i in range(getattr(self, role)):
                    self._spawn(
                        f"{role}-{i}",
                        [
                            "worker",
                            "--role",
                            role,
                            "--model",
                            self.model,
                            "--router",
                            self.address,
                            "--worker-id",
                            f"{role}-{i}",
                            *self.worker_args,
                        ],
                    )
            self._wait_for_workers(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, args: list[str]) -> Child:
        assert self.log_dir is not None
        child = Child(name, args, self.log_dir / f"{name}.log")
        with child.log_path.open("wb") as log:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "kvferry", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_terminate_with_parent,
            )
        self.children.append(child)
        return child

    def _check_alive(self) -> None:
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is not None:
                raise ClusterStartError(
                    f"{child.name} exited with {code} during start-up"
                    f" (log {child.log_path}):\n{child.log_tail()}"
                )

    def _wait_for_router(self, router: Child, deadline: float) -> str:
        while time.monotonic() < deadline:
            self._check_alive()
            match = _SERVING.search(router.log_tail(50))
            if match:
                return match.group(1)
            time.sleep(_POLL_S)
        raise ClusterStartError(f"the router did not start in time:\n{router.log_tail()}")

    def _wait_for_workers(self, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = gen_grpc.GenerationStub(channel)  # type: ignore[no-untyped-call]
            registered = 0
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    status = stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=2)
                    registered = len(status.workers)
                except grpc.RpcError:
                    registered = 0
                if registered >= self.num_workers:
                    return
                time.sleep(_POLL_S * 4)
        raise ClusterStartError(
            f"{registered} of {self.num_workers} workers registered within"
            f" {self.start_timeout_s:.0f}s; logs in {self.log_dir}"
        )

    def stop(self) -> None:
        """SIGTERM workers (they drain), then the router; SIGKILL whatever outlives the
        timeout. Safe to call twice."""
        workers = [c for c in self.children if c.name != "router"]
        router = [c for c in self.children if c.name == "router"]
        for group in (workers, router):
            for child in group:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            stop_by = time.monotonic() + self.stop_timeout_s
            for child in group:
                assert child.process is not None
                try:
                    child.process.wait(max(0.0, stop_by - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()

    def kill(self, name: str) -> None:
        """SIGKILL one child (failure tests)."""
        for child in self.children:
            if child.name == name and child.process is not None:
                child.process.kill()
                child.process.wait()
                return
        raise KeyError(name)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
