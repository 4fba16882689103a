"""A standalone gRPC server hosting only KVTransfer (tests, benchmarks, and workers that
keep KV traffic on its own port)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from .config import KVTransferConfig
from .protocols import KVSink
from .servicer import KVTransferServicer


class KVTransferServer:
    """Start with `await KVTransferServer.start(sink)`; `endpoint` is then host:port."""

    def __init__(self, server: grpc.aio.Server, servicer: KVTransferServicer, endpoint: str):
        self.server = server
        self.servicer = servicer
        self.endpoint = endpoint

    @classmethod
    async def start(
        cls,
        sink: KVSink,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: KVTransferConfig | None = None,
        grpc_options: Sequence[tuple[str, int | str]] = (),
    ) -> KVTransferServer:
        """Bind `host:port` (port 0: any free port) and start serving. `grpc_options` add
        to (or override) the config's."""
        config = config or KVTransferConfig()
        servicer = KVTransferServicer(sink, config)
        server = grpc.aio.server(options=[*config.grpc_options(), *grpc_options])
        servicer.add_to_server(server)
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"could not bind the KV transfer server to {host}:{port}")
        await server.start()
        return cls(server, servicer, f"{host}:{bound}")

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    async def stop(self, grace_s: float | None = 1.0) -> None:
        """Stop serving; in-flight pushes get `grace_s` seconds to finish."""
        await self.server.stop(grace_s)
        self.servicer.close()
