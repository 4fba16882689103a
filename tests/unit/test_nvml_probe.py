"""NVML topology discovery against a fake `pynvml` (the real bindings' constants, error
classes and ctypes structs; fake functions over a described machine), plus the real
bindings on this machine, which has no NVIDIA driver."""

from __future__ import annotations

import ctypes
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from kvferry.services.worker import nvml_probe
from kvferry.services.worker.nvml_probe import connected, fabric_domain, peers_domain, probe
from kvferry.services.worker.topology import NvmlKind

UUID = bytes(range(1, 17))
UUID_TEXT = "01020304-0506-0708-090a-0b0c0d0e0f10"


@dataclass
class Gpu:
    uuid: str
    bus: str
    fabric: tuple[int, int, bytes, int] | type[pynvml.NVMLError] | None = None
    """(state, status, clusterUuid, cliqueId), or the error the fabric call raises."""
    links: list[tuple[int, str]] = field(default_factory=list)
    """(remote device type, remote bus id) per active link; absent links follow."""
    nvlink_error: type[pynvml.NVMLError] | None = None


def _raise(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # the real class maps the code to its subclass


def fake_pynvml(gpus: list[Gpu], *, init_error: int | None = None) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    for name, value in vars(pynvml).items():
        if name.startswith(("NVML_", "NVMLError", "c_nvml", "nvmlGpuFabricInfo")):
            setattr(module, name, value)
    calls: list[str] = []
    module.calls = calls  # type: ignore[attr-defined]
    by_uuid = {g.uuid: g for g in gpus}

    def init() -> None:
        calls.append("init")
        if init_error is not None:
            raise _raise(init_error)

    def shutdown() -> None:
        calls.append("shutdown")

    def handle_by_uuid(uuid: str) -> Gpu:
        if uuid not in by_uuid:
            raise _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return by_uuid[uuid]

    def pci_info(gpu: Gpu) -> Any:
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.bus.upper().encode()  # NVML writes upper-case hex
        return info

    def fabric_v(gpu: Gpu, ref: Any) -> int:
        if isinstance(gpu.fabric, type):
            raise gpu.fabric(0)
        if gpu.fabric is None:
            raise _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        info = ref._obj
        assert isinstance(info, pynvml.c_nvmlGpuFabricInfoV_t)
        info.state, info.status, cluster, info.cliqueId = gpu.fabric
        ctypes.memmove(info.clusterUuid, cluster, 16)
        return 0

    def link_state(gpu: Gpu, link: int) -> int:
        if gpu.nvlink_error is not None:
            raise gpu.nvlink_error(0)
        if link >= 18:
            raise _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED if link < len(gpu.links) else 0

    def remote_pci(gpu: Gpu, link: int) -> Any:
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.links[link][1].encode()
        return info

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByUUID = handle_by_uuid  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]  # type: ignore[attr-defined]
    module.nvmlDeviceGetPciInfo = pci_info  # type: ignore[attr-defined]
    module.nvmlDeviceGetGpuFabricInfoV = fabric_v  # type: ignore[attr-defined]
    module.nvmlDeviceGetNvLinkState = link_state  # type: ignore[attr-defined]
    module.nvmlDeviceGetNvLinkRemoteDeviceType = lambda g, i: g.links[i][0]  # type: ignore[attr-defined]
    module.nvmlDeviceGetNvLinkRemotePciInfo = remote_pci  # type: ignore[attr-defined]
    return module


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Any:
    def _install(module: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    return _install


COMPLETED = pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
OK = pynvml.NVML_SUCCESS
GPU, SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU, pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH


def test_fabric_domain_format() -> None:
    assert fabric_domain(UUID, 3) == f"{UUID_TEXT}.3"
    with pytest.raises(ValueError):
        fabric_domain(b"short", 0)


def test_fabric_clique(install: Any) -> None:
    nvml = install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0", (COMPLETED, OK, UUID, 3))]))
    got = probe("GPU-a", "host-a")
    assert (got.kind, got.domain, got.pending) == (NvmlKind.CLIQUE, f"{UUID_TEXT}.3", False)
    assert got.detail == f"NVML: GPU fabric clique {UUID_TEXT}.3"
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("fabric", "note", "pending"),
    [
        (None, "no GPU fabric", False),  # NotSupported from the call
        ((pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, OK, UUID, 0), "no GPU fabric", False),
        ((pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS, OK, UUID, 3), "not complete", True),
        ((pynvml.NVML_GPU_FABRIC_STATE_NOT_STARTED, OK, bytes(16), 0), "not complete", True),
        ((COMPLETED, pynvml.NVML_ERROR_UNKNOWN, UUID, 3), "registration failed", False),
        ((COMPLETED, OK, bytes(16), 0), "cluster UUID is zero", False),  # HGX without MNNVL
    ],
)
def test_no_clique_falls_back_to_nvlink_peers(
    install: Any, fabric: Any, note: str, pending: bool
) -> None:
    install(
        fake_pynvml(
            [
                Gpu("GPU-a", "0000:18:00.0", fabric, links=[(GPU, "0000:2a:00.0")]),
                Gpu("GPU-b", "0000:2a:00.0", fabric, links=[(GPU, "0000:18:00.0")]),
            ]
        )
    )
    got = probe("GPU-a", "host-a")
    assert got.kind is NvmlKind.PEERS
    assert got.domain == peers_domain("host-a", frozenset({"gpu:0000:18:00.0", "gpu:0000:2a:00.0"}))
    assert note in got.detail and "NVLink peers: 2 GPU(s)" in got.detail
    assert got.pending is pending
    # the peer sees the same domain
    assert probe("GPU-b", "host-a").domain == got.domain


def test_nvswitch_domain_is_the_same_for_every_gpu_even_when_alone_in_a_container(
    install: Any,
) -> None:
    switches = [(SWITCH, f"0000:0{i}:00.0") for i in range(4)]
    board = [Gpu(f"GPU-{i}", f"0000:{16 + i:02x}:00.0", links=list(switches)) for i in range(8)]
    install(fake_pynvml(board))
    domains = {probe(g.uuid, "node-1").domain for g in board}
    assert len(domains) == 1
    # a pod that sees only GPU 5 reaches the same switches: the same domain
    install(fake_pynvml([board[5]]))
    alone = probe("GPU-5", "node-1")
    assert alone.domain in domains
    assert "1 GPU(s) and 4 NVSwitch(es)" in alone.detail
    # another host's board is another domain
    assert probe("GPU-5", "node-2").domain not in domains


def test_no_nvlink(install: Any) -> None:
    install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0", nvlink_error=pynvml.NVMLError_NotSupported)]))
    got = probe("GPU-a", "h")
    assert (got.kind, got.domain) == (NvmlKind.NONE, "")
    assert got.detail == "NVML: no GPU fabric, no active NVLink"


def test_links_to_a_cpu_are_not_a_gpu_domain(install: Any) -> None:
    npu = pynvml.NVML_NVLINK_DEVICE_TYPE_IBMNPU
    install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0", links=[(npu, "0000:00:01.0")])]))
    assert probe("GPU-a", "h").kind is NvmlKind.NONE


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML not found (NVMLError_LibraryNotFound)"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVML unavailable (NVMLError_DriverNotLoaded:"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "NVML unavailable (NVMLError_NoPermission:"),
    ],
)
def test_init_errors(install: Any, code: int, detail: str) -> None:
    nvml = install(fake_pynvml([], init_error=code))
    got = probe("GPU-a", "h")
    assert (got.kind, got.pending) == (NvmlKind.NONE, False)
    assert got.detail.startswith(detail)
    assert nvml.calls == ["init"]  # nothing to shut down


def test_query_errors_are_reported_and_nvml_shut_down(install: Any) -> None:
    nvml = install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0")]))
    got = probe("GPU-unknown", "h")
    assert got.detail == "NVML query failed (NVMLError_NotFound: Not Found)"
    assert nvml.calls == ["init", "shutdown"]
    nvml = install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0", pynvml.NVMLError_GpuIsLost)]))
    assert probe("GPU-a", "h").detail == "NVML query failed (NVMLError_GpuIsLost: GPU is lost)"
    assert nvml.calls == ["init", "shutdown"]


def test_no_gpu_in_use(install: Any) -> None:
    install(fake_pynvml([Gpu("GPU-a", "0000:18:00.0")]))
    assert probe(None, "h").detail == "NVML found, but this worker uses no GPU"


def test_bindings_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert probe("GPU-a", "h").detail.startswith("NVML bindings not installed")


def test_real_bindings_without_a_driver() -> None:
    """This machine has no NVIDIA driver: the real pynvml says the library is missing."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("NVML is installed here")
    got = probe(None, "h")
    assert got.detail == "NVML not found (NVMLError_LibraryNotFound)"
    assert got.kind is NvmlKind.NONE


def test_connected_components() -> None:
    edges = [("a", "b"), ("b", "c"), ("d", "e")]
    assert connected("a", edges) == {"a", "b", "c"}
    assert connected("e", edges) == {"d", "e"}
    assert connected("z", edges) == {"z"}
    assert peers_domain("h", frozenset({"gpu:x"})) == ""
    assert nvml_probe.peers_domain("h", frozenset({"gpu:x", "gpu:y"})).startswith("h/nvl:")
