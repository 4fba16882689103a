"""Topology labels over real gRPC: a worker registers its `--label`s; a worker under the
operator registers again once its annotations file gains `kvferry.io/topology`; the
router's GetClusterStatus shows labels, source and (without NVML) why."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
from pathlib import Path
from typing import Any

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import generation_pb2_grpc as gen_grpc
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.services.engine.block_hash import HASH_SCHEME_VERSION
from kvferry.services.engine.config import EngineConfig
from kvferry.services.router.config import RouterConfig
from kvferry.services.router.registry import Registry
from kvferry.services.router.registry_servicer import RegistryServicer
from kvferry.services.router.server import RouterServer
from kvferry.services.worker.config import WorkerConfig
from kvferry.services.worker.podinfo import TOPOLOGY_ANNOTATION
from kvferry.services.worker.registration import Registration
from kvferry.services.worker.server import WorkerServer
from kvferry.services.worker.topology_discovery import default_node

ENGINE = EngineConfig(model="tiny", max_model_len=128, num_kv_blocks=16)
ROUTER = RouterConfig(port=0, heartbeat_interval_s=0.2, worker_ttl_s=3.0)


def nvml_installed() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


async def workers(stub: gen_grpc.GenerationStub) -> dict[str, gen_pb.WorkerStatus]:
    status = await stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=5)
    return {w.worker_id: w for w in status.workers}


def test_flags_then_operator_labels_reach_the_router(tmp_path: Path) -> None:
    (tmp_path / "annotations").write_text('kubernetes.io/config.seen="2026-01-01"\n')

    async def main() -> None:
        router = await RouterServer.start(ROUTER)
        flagged = WorkerConfig(
            role="decode",
            router=router.registry_address,
            worker_id="d0",
            labels={"nvlink_domain": "dom-1", "rack": "r1"},
        )
        operated = WorkerConfig(
            role="prefill",
            router=router.registry_address,
            worker_id="p0",
            podinfo_dir=str(tmp_path),
        )
        started = [await WorkerServer.start(ENGINE, c) for c in (flagged, operated)]
        channel = grpc.aio.insecure_channel(router.address)
        stub = gen_grpc.GenerationStub(channel)
        try:
            for _ in range(400):
                seen = await workers(stub)
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.025)
            node = default_node(os.environ, socket.gethostname())
            d0, p0 = seen["d0"], seen["p0"]
            assert dict(d0.labels) == {"node": node, "nvlink_domain": "dom-1", "rack": "r1"}
            assert d0.topology_source == "flags"
            assert dict(p0.labels) == {"node": node}
            assert p0.topology_source == "none"
            assert "waiting for the operator's kvferry.io/topology" in p0.topology_detail
            if not nvml_installed():
                assert d0.topology_detail.startswith("NVML not found (NVMLError_LibraryNotFound)")

            # The operator patches the pod; the kubelet rewrites the file.
            value = json.dumps({"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"})
            (tmp_path / "annotations").write_text(
                f'kubernetes.io/config.seen="2026-01-01"\n{TOPOLOGY_ANNOTATION}={json.dumps(value)}\n'
            )
            for _ in range(300):  # heartbeats every 0.2 s: well within 15 s
                p0 = (await workers(stub))["p0"]
                if p0.topology_source != "none":
                    break
                await asyncio.sleep(0.05)
            assert dict(p0.labels) == {"node": "gpu-7", "nvlink_domain": "c1.3", "zone": "z1"}
            assert p0.topology_source == "operator"
            assert p0.topology_detail.endswith("labels from the operator")
            assert len(router.registry.records()) == 2  # replaced, not duplicated
        finally:
            await channel.close()
            for worker in started:
                await worker.stop(0.5)
            await router.stop(0.5)

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_registers_again_on_change_but_not_while_draining() -> None:
    """Registration asks `refresh` before each heartbeat: True -> Register again (the
    router replaces the record); a draining worker keeps its record (a new Register would
    mark it healthy until the next heartbeat)."""

    async def main() -> None:
        servicer = RegistryServicer(Registry(), heartbeat_interval_s=0.05)
        registers: list[dict[str, str]] = []
        register = servicer.Register

        async def counting(request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
            registers.append(dict(request.labels))
            return await register(request, context)

        servicer.Register = counting  # type: ignore[method-assign]
        router = grpc.aio.server()
        pb_grpc.add_RegistryServicer_to_server(servicer, router)  # type: ignore[no-untyped-call]
        port = router.add_insecure_port("127.0.0.1:0")
        await router.start()
        labels = {"zone": "z1"}
        changed = asyncio.Event()
        draining = False

        async def announce() -> pb.RegisterRequest:
            return pb.RegisterRequest(
                worker_id="w0",
                role=gen_pb.WORKER_ROLE_DECODE,
                address="127.0.0.1:1",
                block_hash_scheme=HASH_SCHEME_VERSION,
                labels=labels,
            )

        async def refresh() -> bool:
            if changed.is_set():
                changed.clear()
                return True
            return False

        registration = Registration(
            f"127.0.0.1:{port}",
            announce,
            lambda: asyncio.sleep(0, gen_pb.WorkerLoad()),
            lambda: draining,
            refresh=refresh,
            interval_s=0.05,
        )
        registration.start()
        try:
            await asyncio.wait_for(registration.registered.wait(), 10)
            labels = {"zone": "z2"}
            changed.set()
            for _ in range(200):
                if servicer.registry.records()[0].info.labels == {"zone": "z2"}:
                    break
                await asyncio.sleep(0.02)
            assert registers == [{"zone": "z1"}, {"zone": "z2"}]
            draining = True
            labels = {"zone": "z3"}
            changed.set()
            await asyncio.sleep(0.5)  # ten heartbeats
            assert registers == [{"zone": "z1"}, {"zone": "z2"}]
        finally:
            await registration.stop()
            await router.stop(0)

    asyncio.run(asyncio.wait_for(main(), timeout=60))
