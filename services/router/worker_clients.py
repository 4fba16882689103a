"""One gRPC channel per worker address, opened on first use, closed when the worker goes."""

from __future__ import annotations

import asyncio

import grpc

from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc

_OPTIONS = [
    # A dead worker is noticed by the call's deadline or by keepalive, not by waiting on a
    # half-open TCP connection.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),  # the router decides where a failed call goes next
    # A worker restarting on the same address is reachable again within a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # NOTE: a prefix-cache snapshot (GetStats with include_snapshot) lists every cached
    # block hash, ~10 bytes each: gRPC's default 4 MiB would refuse one past ~400k blocks.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


class WorkerClients:
    def __init__(self) -> None:
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.WorkerStub]] = {}

    def stub(self, address: str) -> pb_grpc.WorkerStub:
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            entry = (channel, pb_grpc.WorkerStub(channel))  # type: ignore[no-untyped-call]
            self._channels[address] = entry
        return entry[1]

    async def close(self, address: str) -> None:
        entry = self._channels.pop(address, None)
        if entry is not None:
            await entry[0].close(grace=None)

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(a) for a in list(self._channels)))
