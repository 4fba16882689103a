"""The router process's gRPC server: Generation (clients), Registry (workers), health and
reflection; plus the loop that expires silent workers.

    router = await RouterServer.start(RouterConfig(port=0))
    router.address          # host:port for clients (and workers, unless --registry-port)
    await router.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvferry._proto.kvferry.v1 import worker_pb2, worker_pb2_grpc
from kvferry.security import BearerTokenInterceptor, read_token_file, server_credentials
from kvferry.tokenizer import Tokenizer, load_tokenizer

from .config import RouterConfig
from .generation import SERVICE_NAME, GenerationServicer
from .kv_index import KVIndex
from .kv_index_poller import KVIndexPoller
from .placement import (
    BandwidthTable,
    PlacementConfig,
    PlacementPolicy,
    RouterView,
    build_policy,
    load_config,
    named_config,
)
from .registry import Registry, RegistryConfig
from .registry_servicer import RegistryServicer
from .worker_clients import WorkerClients

log = logging.getLogger(__name__)

REGISTRY_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


def router_tokenizer(config: RouterConfig) -> Tokenizer:
    """The tokenizer the workers use: the same rule as the engine's (a folder's
    tokenizer.json, else the presets' byte tokenizer)."""
    if config.tokenizer == "byte":
        return load_tokenizer(None, byte_level=True)
    if config.tokenizer:
        return load_tokenizer(Path(config.tokenizer))
    if Path(config.model).is_dir():
        return load_tokenizer(Path(config.model))
    return load_tokenizer(None, byte_level=True)


def placement_config(config: RouterConfig) -> PlacementConfig:
    """--placement (a built-in) with --short-prompt-tokens, then --placement-config's keys
    (a file may name its own `policy:` to start from)."""
    base = {"short_prompt_tokens": config.short_prompt_tokens}
    if config.placement_config:
        return load_config(config.placement_config, default_policy=config.placement, **base)
    return named_config(config.placement, **base)


class RouterServer:
    def __init__(
        self,
        servers: list[grpc.aio.Server],
        generation: GenerationServicer,
        registry: Registry,
        clients: WorkerClients,
        address: str,
        registry_address: str,
    ) -> None:
        self.servers = servers
        self.generation = generation
        self.registry = registry
        self.clients = clients
        self.address = address
        self.registry_address = registry_address
        self._expiry: asyncio.Task[None] | None = None
        self.poller: KVIndexPoller | None = None
        """Feeds the cluster KV index and bandwidth table (None: --index-poll-interval-s 0)."""
        self.metrics_address = ""
        """host:port serving /metrics (empty: metrics off)."""

    @classmethod
    async def start(
        cls, config: RouterConfig, *, policy: PlacementPolicy | None = None
    ) -> RouterServer:
        tokenizer = router_tokenizer(config)
        registry = Registry(RegistryConfig(ttl_s=config.worker_ttl_s))
        clients = WorkerClients()
        placement = placement_config(config)
        policy = policy or build_policy(placement)
        index = KVIndex()
        bandwidth = BandwidthTable(placement.transfer)
        view = RouterView(registry, index, bandwidth)
        generation = GenerationServicer(config, registry, policy, clients, tokenizer, view=view)
        registry_servicer = RegistryServicer(
            registry, heartbeat_interval_s=config.heartbeat_interval_s, model=config.model
        )
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if config.auth_token_file:
            token = read_token_file(config.auth_token_file)
            interceptors.append(BearerTokenInterceptor(token, [SERVICE_NAME]))
        front = grpc.aio.server(interceptors=interceptors)
        generation.add_to_server(front)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, front)
        names = [SERVICE_NAME, health.SERVICE_NAME]
        bind = f"{config.host}:{config.port}"
        credentials = server_credentials(config.tls_cert or None, config.tls_key or None)
        if credentials is not None:
            port = front.add_secure_port(bind, credentials)
        else:
            port = front.add_insecure_port(bind)
        if port == 0:
            raise OSError(f"cannot bind {bind}")
        address = f"{config.host}:{port}"
        servers = [front]
        if config.registry_port == -1:
            worker_pb2_grpc.add_RegistryServicer_to_server(registry_servicer, front)  # type: ignore[no-untyped-call]
            names.append(REGISTRY_SERVICE)
            registry_address = address
        else:
            back = grpc.aio.server()
            worker_pb2_grpc.add_RegistryServicer_to_server(registry_servicer, back)  # type: ignore[no-untyped-call]
            back_bind = f"{config.host}:{config.registry_port}"
            back_port = back.add_insecure_port(back_bind)
            if back_port == 0:
                raise OSError(f"cannot bind {back_bind}")
            registry_address = f"{config.host}:{back_port}"
            servers.append(back)
        if config.reflection:
            reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], front)
        for server in servers:
            await server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        router = cls(servers, generation, registry, clients, address, registry_address)
        if config.metrics_port != -1:
            port = generation.metrics.serve(config.host, config.metrics_port)
            router.metrics_address = f"{config.host}:{port}"
        router._expiry = asyncio.create_task(router._expire_loop(config.heartbeat_interval_s))
        if config.index_poll_interval_s > 0:
            router.poller = KVIndexPoller(
                registry, clients, index, bandwidth, interval_s=config.index_poll_interval_s
            )
            router.poller.start()
        log.info("router placement: policy=%s", placement.name)
        log.info("router serving: address=%s registry=%s", address, registry_address)
        return router

    async def _expire_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s / 2)
            for record in self.registry.expire(time.monotonic()):
                log.warning("worker expired (no heartbeat): %s", record.info.worker_id)
                if not record.in_flight:  # closing cancels calls still running on it
                    await self.clients.close(record.info.address)

    async def stop(self, grace_s: float = 1.0) -> None:
        if self.poller is not None:
            await self.poller.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await asyncio.gather(*(s.stop(grace_s) for s in self.servers))
        await self.generation.close()
        self.generation.metrics.close()
        await self.clients.close_all()
