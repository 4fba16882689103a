"""The worker's side of the Registry: register, heartbeat, re-register when told to.

Runs as a background task. A router that is down or slow never stops the worker: calls
carry deadlines and failures are retried with capped backoff. Before each heartbeat it
asks `refresh` (topology discovery) whether what the worker announces changed; if so it
registers again, which replaces the router's record of this worker id and address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0


class Registration:
    def __init__(
        self,
        router: str,
        announce: Callable[[], Awaitable[pb.RegisterRequest]],
        load: Callable[[], Awaitable[gen_pb.WorkerLoad]],
        draining: Callable[[], bool],
        *,
        refresh: Callable[[], Awaitable[bool]] | None = None,
        interval_s: float = 2.0,
        rpc_timeout_s: float = 2.0,
    ) -> None:
        self.router = router
        self.announce = announce
        self.load = load
        self.draining = draining
        self.refresh = refresh
        """True when the announcement changed (new topology labels): register again."""
        self.interval_s = interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self.registered = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def beat_now(self) -> None:
        """Heartbeat at once (e.g. to tell the router this worker started draining)."""
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kvferry-registration")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.rpc_timeout_s)

    async def _changed(self) -> bool:
        # NOTE: a draining worker keeps its record as it is: registering again would
        # mark it healthy until the next heartbeat, and the router could place work here.
        if self.refresh is None or self.draining():
            return False
        return await self.refresh()

    async def _run(self) -> None:
        backoff = 0.1
        async with grpc.aio.insecure_channel(self.router) as channel:
            stub = pb_grpc.RegistryStub(channel)  # type: ignore[no-untyped-call]
            while True:
                try:
                    if not self.registered.is_set():
                        reply = await stub.Register(
                            await self.announce(), timeout=self.rpc_timeout_s
                        )
                        if reply.heartbeat_interval_ms:
                            self.interval_s = reply.heartbeat_interval_ms / 1000
                        self.registered.set()
                        log.info("registered with router %s", self.router)
                    elif await self._changed():
                        log.info("topology changed; registering again with %s", self.router)
                        self.registered.clear()
                        continue
                    else:
                        request = pb.HeartbeatRequest(
                            worker_id=(await self.announce()).worker_id,
                            load=await self.load(),
                            draining=self.draining(),
                        )
                        beat = await stub.Heartbeat(request, timeout=self.rpc_timeout_s)
                        if beat.must_register:
                            log.warning(
                                "router %s forgot this worker; registering again", self.router
                            )
                            self.registered.clear()
                            continue
                    backoff = 0.1
                    await self._pause(self.interval_s)
                except grpc.aio.AioRpcError as err:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # stop(): the call was cut
                        raise asyncio.CancelledError from err
                    log.warning(
                        "router %s: %s (%s); retrying",
                        self.router,
                        err.code().name,
                        err.details(),
                    )
                    self.registered.clear()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
