"""`kvferry worker`: serve one worker until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from kvferry.services.engine.config import EngineConfig

from .config import WorkerConfig
from .server import WorkerServer

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
"""Longest wait for in-flight requests after SIGTERM (Kubernetes' default grace is 30 s)."""


async def serve(engine_config: EngineConfig, config: WorkerConfig) -> None:
    server = await WorkerServer.start(engine_config, config)
    print(f"kvferry worker {config.role} serving on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    servicer = server.servicer
    servicer.draining = True  # new Admit/Prefill calls get UNAVAILABLE
    if server.registration is not None:
        server.registration.beat_now()  # the router stops placing here now, not in 2 s
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while server.engine.num_active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if server.engine.num_active:
        log.warning("drain timed out with %d requests in flight", server.engine.num_active)
    await server.stop()
    print("kvferry worker stopped", flush=True)


def run(engine_config: EngineConfig, config: WorkerConfig) -> None:
    asyncio.run(serve(engine_config, config))
