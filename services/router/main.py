"""`kvferry router`: serve until SIGTERM/SIGINT, then stop taking requests and finish."""

from __future__ import annotations

import asyncio
import logging
import signal

from .config import RouterConfig
from .server import RouterServer

log = logging.getLogger(__name__)

STOP_GRACE_S = 25.0
"""How long in-flight streams may run on after SIGTERM (inside Kubernetes' 30 s)."""


async def serve(config: RouterConfig) -> None:
    router = await RouterServer.start(config)
    where = router.address
    if router.registry_address != router.address:
        where += f" (workers register at {router.registry_address})"
    print(f"kvferry router serving {config.model} on {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.stop(STOP_GRACE_S)
    print("kvferry router stopped", flush=True)


def run(config: RouterConfig) -> None:
    asyncio.run(serve(config))
