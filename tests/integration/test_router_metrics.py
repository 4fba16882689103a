"""The router's figures over real sockets: latency percentiles in GetClusterStatus and the
Prometheus /metrics endpoint, after real requests (finished, failed, aborted)."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry.sampling_params import SamplingParams

from .router_cluster import RouterCluster, router_config, run_cluster

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_latency_and_metrics_follow_real_requests() -> None:
    async def test(cluster: RouterCluster) -> None:
        prompts = [[7 + i] * (8 + 10 * i) for i in range(4)]  # short ones skip the prefill hop
        await asyncio.gather(*(cluster.generate(p, GREEDY) for p in prompts))
        with pytest.raises(grpc.aio.AioRpcError):  # a client error: not a failure of ours
            await cluster.generate([1] * 300, GREEDY)
        status = await cluster.stub.GetClusterStatus(gen_pb.ClusterStatusRequest(), timeout=5)
        lat = status.latency
        assert (lat.num_requests, lat.num_errors, lat.window_s) == (4, 0, 60.0)
        assert 0 < lat.ttft_p50_ms <= lat.ttft_p90_ms <= lat.ttft_p99_ms < 30_000
        assert 0 < lat.tpot_p50_ms <= lat.tpot_p99_ms < 30_000

        samples = await asyncio.to_thread(scrape, cluster.router.metrics_address)
        assert samples["kvferry_router_ttft_seconds_count"] == 4
        assert samples["kvferry_router_tpot_seconds_count"] == 4
        assert samples['kvferry_router_requests_total{outcome="finished"}'] == 4
        assert samples['kvferry_router_requests_total{outcome="invalid_argument"}'] == 1
        assert samples["kvferry_router_output_tokens_total"] == 4 * GREEDY.max_tokens
        assert samples['kvferry_workers{role="decode",state="healthy"}'] == 1
        assert samples['kvferry_workers{role="prefill",state="healthy"}'] == 1
        assert samples['kvferry_pool_kv_blocks_used_ratio{role="decode"}'] >= 0
        assert samples["kvferry_router_requests_in_flight"] == 0
        assert samples['kvferry_pool_requests_in_flight{role="decode"}'] == 0
        assert samples['kvferry_router_window_requests{outcome="finished"}'] == 4
        assert samples['kvferry_router_window_requests{outcome="failed"}'] == 0
        p90 = samples['kvferry_router_window_latency_seconds{metric="ttft",quantile="0.9"}']
        assert p90 == pytest.approx(lat.ttft_p90_ms / 1e3)

    run_cluster(test, router=router_config(metrics_port=0))


def test_metrics_are_off_by_default_and_bad_ports_are_refused() -> None:
    async def test(cluster: RouterCluster) -> None:
        assert cluster.router.metrics_address == ""

    run_cluster(test)
    with pytest.raises(ValueError, match="metrics_port"):
        router_config(metrics_port=70000)
