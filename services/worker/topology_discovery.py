"""The I/O shell around `topology.merge`: ask NVML once at start, read the operator's
annotation file whenever asked (the registration loop asks every heartbeat), and say
when the merged labels changed so the worker registers again.

    discovery = TopologyDiscovery.start(config, llm.device)
    discovery.current            # Topology(labels, source, detail)
    await discovery.refresh()    # True when the labels, source or detail changed
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import nvml_probe
from .config import WorkerConfig
from .podinfo import OperatorLabels, read_operator_labels
from .topology import NvmlTopology, Topology, merge

log = logging.getLogger(__name__)

NVML_RETRY_S = 30.0
"""How often to ask NVML again while the GPU fabric is still registering."""


def default_node(env: Mapping[str, str], hostname: str) -> str:
    """`NODE_NAME` (set from `spec.nodeName` by the operator's pod template), else the
    hostname. NOTE: in a pod the hostname is the pod's name, so NODE_NAME matters there."""
    return env.get("NODE_NAME", "").strip() or hostname


def gpu_uuid(device: Any) -> str | None:
    """NVML's UUID (`GPU-...`) of the CUDA device the engine runs on; None off CUDA."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class TopologyDiscovery:
    def __init__(
        self,
        *,
        flags: Mapping[str, str],
        podinfo_dir: str,
        gpu: str | None,
        node: str,
        probe: Callable[[str | None, str], NvmlTopology] = nvml_probe.probe,
        read_podinfo: Callable[[str], OperatorLabels] = read_operator_labels,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flags = dict(flags)
        self.podinfo_dir = podinfo_dir
        self.gpu = gpu
        self.node = flags.get("node") or node
        """The host's name for a host-local NVLink domain (a flag wins; else NODE_NAME)."""
        self._probe = probe
        self._read_podinfo = read_podinfo
        self._clock = clock
        self._nvml = probe(gpu, self.node)
        self._nvml_at = clock()
        self._operator = self._read_operator()
        self._warned = ""
        self.current = self._merge()
        self._warn(self._operator.problem)
        log.info(
            "topology: labels=%s source=%s (%s)",
            dict(self.current.labels),
            self.current.source,
            self.current.detail,
        )

    @classmethod
    def start(cls, config: WorkerConfig, device: Any) -> TopologyDiscovery:
        try:
            gpu = gpu_uuid(device)
        except (RuntimeError, AssertionError, AttributeError) as err:  # torch could not say
            log.warning("cannot identify this worker's GPU for NVML: %s", err)
            gpu = None
        return cls(
            flags=config.labels,
            podinfo_dir=config.podinfo_dir,
            gpu=gpu,
            node=default_node(os.environ, socket.gethostname()),
        )

    def refresh(self) -> bool:
        """Read the annotation file again (and NVML, while its fabric is registering);
        True when the topology changed."""
        if self._nvml.pending and self._clock() - self._nvml_at >= NVML_RETRY_S:
            self._nvml = self._probe(self.gpu, self.node)
            self._nvml_at = self._clock()
        self._operator = self._read_operator()
        self._warn(self._operator.problem)
        new = self._merge()
        if new == self.current:
            return False
        log.info(
            "topology changed: labels=%s source=%s (%s)",
            dict(new.labels),
            new.source,
            new.detail,
        )
        self.current = new
        return True

    async def refresh_async(self) -> bool:
        return await asyncio.to_thread(self.refresh)

    def _read_operator(self) -> OperatorLabels:
        if not self.podinfo_dir:
            return OperatorLabels()
        return self._read_podinfo(self.podinfo_dir)

    def _merge(self) -> Topology:
        return merge(
            flags=self.flags,
            operator=self._operator.labels,
            nvml=self._nvml,
            default_node=self.node,
            notes=[self._operator.note],
        )

    def _warn(self, problem: str) -> None:
        """Log each distinct problem once (the file is read every few seconds)."""
        if problem and problem != self._warned:
            log.warning("topology annotation: %s (ignored)", problem)
        self._warned = problem
