"""End to end: workers declare NVLink domains and racks; the router's (prefill, decode)
pairs stay inside a domain whenever both pools have a worker there, and the outputs stay
token-identical to the offline engine."""

from __future__ import annotations

import grpc
import pytest

from kvferry import LLM, SamplingParams
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry._proto.kvferry.v1 import worker_pb2 as pb
from kvferry._proto.kvferry.v1 import worker_pb2_grpc as pb_grpc
from kvferry.topology import NODE, NVLINK_DOMAIN, RACK, ZONE, Tier

from .router_cluster import ENGINE, RouterCluster, router_config, run_cluster, tokens_of

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPTS = [[256, *((13 * i + j) % 250 for j in range(40 + 9 * i))] for i in range(8)]

ROLES = ("prefill", "prefill", "decode", "decode")
LABELS = [
    {ZONE: "z1", RACK: "r1", NVLINK_DOMAIN: "nvl-a", NODE: "n1"},
    {ZONE: "z1", RACK: "r2", NVLINK_DOMAIN: "nvl-b", NODE: "n3"},
    {ZONE: "z1", RACK: "r1", NVLINK_DOMAIN: "nvl-a", NODE: "n2"},
    {ZONE: "z1", RACK: "r2", NVLINK_DOMAIN: "nvl-b", NODE: "n4"},
]
DOMAIN_PEER = {"prefill-0": "decode-2", "prefill-1": "decode-3"}


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    llm = LLM(model="tiny", max_model_len=ENGINE.max_model_len)
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_pairs_follow_the_nvlink_domains(reference: list[list[int]]) -> None:
    async def test(cluster: RouterCluster) -> None:
        registry = cluster.router.registry
        assert {r.info.worker_id: r.info.labels for r in registry.records()} == {
            f"{role}-{i}": LABELS[i] for i, role in enumerate(ROLES)
        }
        outputs = []
        for prompt in PROMPTS:  # one at a time: the choice is topology's, not load's
            outputs.append(tokens_of(await cluster.generate(prompt, GREEDY)))
        assert outputs == reference
        endpoint_of = {w.servicer.config.worker_id: w.address for w in cluster.workers}
        hops = 0
        for prefill in cluster.role("prefill"):
            wid = prefill.servicer.config.worker_id
            async with grpc.aio.insecure_channel(prefill.address) as channel:
                stats = await pb_grpc.WorkerStub(channel).GetStats(
                    pb.WorkerStatsRequest(), timeout=5
                )
            peers = {
                t.peer
                for t in stats.recent_transfers
                if t.direction == kv_pb.TRANSFER_DIRECTION_SEND and t.bytes > 0
            }
            assert peers <= {endpoint_of[DOMAIN_PEER[wid]]}, f"{wid} sent KV out of its domain"
            hops += sum(
                t.direction == kv_pb.TRANSFER_DIRECTION_SEND and t.bytes > 0
                for t in stats.recent_transfers
            )
        assert hops == len(PROMPTS)  # every prompt took the prefill hop
        # and the placement the router reports agrees: nearest tier for each pair
        view = cluster.router.generation.view
        pairs = [
            (p, d)
            for p in registry.records()
            for d in registry.records()
            if p.info.role.value == "prefill" and d.info.role.value == "decode"
        ]
        near = [(p, d) for p, d in pairs if DOMAIN_PEER[p.info.worker_id] == d.info.worker_id]
        for p, d in near:
            assert view.transfer_s(p, d, 10**6) < min(
                view.transfer_s(p, other, 10**6) for _, other in pairs if other is not d
            )
        await cluster.all_blocks_free()

    run_cluster(test, ROLES, labels=LABELS, router=router_config(index_poll_interval_s=0.05))


def test_tier_of_the_declared_labels() -> None:
    from kvferry.topology import tier_between

    assert tier_between(LABELS[0], LABELS[2]) is Tier.SAME_NVLINK_DOMAIN
    assert tier_between(LABELS[0], LABELS[3]) is Tier.SAME_ZONE
