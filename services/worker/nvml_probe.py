"""Ask NVML (`nvidia-ml-py`, imported as `pynvml`) which NVLink domain this worker's GPU
is in.

1. The GPU fabric clique, where the GPU is attached to a multi-node NVLink fabric
   (GB200 NVL72 and similar): `<clusterUuid>.<cliqueId>`, written the way NVIDIA's GPU
   feature discovery writes the node label `nvidia.com/gpu.clique`, so a worker that
   learns it from NVML and one that learns it from the operator agree. Used only when
   registration is complete, succeeded, and the cluster UUID is not all zeros (a board
   without a multi-node fabric can report that).
2. Else the NVLink peers on this host: the GPUs and NVSwitches reachable over active
   links, named `<host>/nvl:<hash>`. With NVSwitches the hash covers the switches (every
   GPU of an HGX board reaches the same ones, even when a container sees only its own
   GPU); without, it covers the connected GPUs' PCI bus ids.
3. Else nothing, with the reason in `NvmlTopology.detail`: bindings missing, NVML library
   not found (`NVMLError_LibraryNotFound` on a machine without the NVIDIA driver), no GPU
   in use, no active NVLink, or an NVML error.

Never raises: topology is a placement hint, and a worker without it still serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from .topology import NvmlKind, NvmlTopology

_GPU = "gpu:"
_SWITCH = "switch:"


def fabric_domain(cluster_uuid: bytes, clique_id: int) -> str:
    """`<clusterUuid as 8-4-4-4-12 hex>.<cliqueId>` (GPU feature discovery's format)."""
    if len(cluster_uuid) != 16:
        raise ValueError(f"a cluster UUID has 16 bytes, got {len(cluster_uuid)}")
    h = cluster_uuid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}.{clique_id}"


def connected(start: str, edges: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The nodes reachable from `start` over undirected `edges` (start included)."""
    neighbours: dict[str, set[str]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    seen, todo = {start}, [start]
    while todo:
        for nxt in neighbours.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


def peers_domain(host: str, component: frozenset[str]) -> str:
    """A host-local NVLink domain id for a connected component of `gpu:`/`switch:` nodes.

    Empty when the component is the GPU alone (no NVLink to anything).
    """
    if len(component) < 2:
        return ""
    switches = sorted(n for n in component if n.startswith(_SWITCH))
    key = ",".join(switches or sorted(component))
    return f"{host}/nvl:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def bus_id(pci_info: Any) -> str:
    """A PCI bus id from an `nvmlPciInfo_t` (bytes or str), lower case."""
    raw = pci_info.busId or pci_info.busIdLegacy
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.strip("\0 ").lower()


def probe(gpu_uuid: str | None, host: str) -> NvmlTopology:
    """The NVLink domain of the GPU with NVML UUID `gpu_uuid` (None: the worker uses no GPU)."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return NvmlTopology(detail="NVML bindings not installed (pip install nvidia-ml-py)")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        if isinstance(err, nvml.NVMLError_LibraryNotFound):
            return NvmlTopology(detail=f"NVML not found ({type(err).__name__})")
        return NvmlTopology(detail=f"NVML unavailable ({type(err).__name__}: {err})")
    try:
        if gpu_uuid is None:
            return NvmlTopology(detail="NVML found, but this worker uses no GPU")
        return _probe_gpu(nvml, nvml.nvmlDeviceGetHandleByUUID(gpu_uuid), host)
    except nvml.NVMLError as err:
        return NvmlTopology(detail=f"NVML query failed ({type(err).__name__}: {err})")
    finally:
        with contextlib.suppress(nvml.NVMLError):  # nothing left to release
            nvml.nvmlShutdown()


def _probe_gpu(nvml: ModuleType, handle: Any, host: str) -> NvmlTopology:
    clique, fabric_note, pending = _fabric_clique(nvml, handle)
    if clique:
        return NvmlTopology(clique, NvmlKind.CLIQUE, f"NVML: GPU fabric clique {clique}")
    start = _GPU + bus_id(nvml.nvmlDeviceGetPciInfo(handle))
    component = connected(start, _nvlink_edges(nvml, handle))
    domain = peers_domain(host, component)
    if not domain:
        return NvmlTopology(detail=f"NVML: {fabric_note}, no active NVLink", pending=pending)
    gpus = sum(1 for n in component if n.startswith(_GPU))
    switches = len(component) - gpus
    found = f"{gpus} GPU(s)" + (f" and {switches} NVSwitch(es)" if switches else "")
    return NvmlTopology(
        domain,
        NvmlKind.PEERS,
        f"NVML: {fabric_note}; NVLink peers: {found}",
        pending=pending,
    )


def _fabric_clique(nvml: ModuleType, handle: Any) -> tuple[str, str, bool]:
    """(clique or "", a note, still registering?)."""
    info = nvml.c_nvmlGpuFabricInfoV_t()
    try:
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    except nvml.NVMLError_FunctionNotFound:  # a driver older than the versioned call
        info = nvml.c_nvmlGpuFabricInfo_t()
        try:
            nvml.nvmlDeviceGetGpuFabricInfo(handle, ctypes.byref(info))
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
            return "", "no GPU fabric", False
    except nvml.NVMLError_NotSupported:
        return "", "no GPU fabric", False
    state = info.state
    if state == nvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED:
        return "", "no GPU fabric", False
    if state in (nvml.NVML_GPU_FABRIC_STATE_NOT_STARTED, nvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS):
        return "", "GPU fabric registration not complete", True
    if info.status != nvml.NVML_SUCCESS:
        return "", f"GPU fabric registration failed (NVML status {info.status})", False
    cluster = bytes(info.clusterUuid)
    if not any(cluster):
        return "", "no multi-node GPU fabric (cluster UUID is zero)", False
    return fabric_domain(cluster, info.cliqueId), "", False


def _nvlink_edges(nvml: ModuleType, own: Any) -> list[tuple[str, str]]:
    """Active NVLinks of every GPU this process can see (its own first), as node pairs."""
    handles = [own]
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
    except nvml.NVMLError:
        pass  # e.g. a GPU this container may not open: its peers still name it
    edges: list[tuple[str, str]] = []
    for handle in handles:
        me = _GPU + bus_id(nvml.nvmlDeviceGetPciInfo(handle))
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            peer = _link_peer(nvml, handle, link)
            if peer:
                edges.append((me, peer))
    return edges


def _link_peer(nvml: ModuleType, handle: Any, link: int) -> str:
    """The node at the far end of an active link; "" for an inactive, absent or CPU link."""
    try:
        if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
            return ""
        try:
            kind = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
        except nvml.NVMLError_NotSupported:  # older GPUs link only to GPUs
            kind = nvml.NVML_NVLINK_DEVICE_TYPE_GPU
        remote = bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link))
    except (nvml.NVMLError_NotSupported, nvml.NVMLError_InvalidArgument):
        return ""  # no NVLink on this GPU, or past its last link
    if kind == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
        return _SWITCH + remote
    if kind == nvml.NVML_NVLINK_DEVICE_TYPE_GPU:
        return _GPU + remote
    return ""  # a CPU (IBM NPU) or unknown device: not a GPU domain
