"""A burst of requests placed while their Admit calls are still on the wire spreads over
the workers: the router counts a request on its pair from the decision, not from the
decode worker's answer (otherwise every request of the burst sees the same idle pair)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Generator
from typing import Any

from kvferry import SamplingParams
from kvferry.services.router.placement import Placement, PlacementRequest
from kvferry.services.router.placement.types import ClusterView

from .router_cluster import RouterCluster, router_config, run_cluster, tokens_of

ADMIT_DELAY_S = 0.3
"""Long enough that every placement of the burst happens before any Admit answers."""
BURST = 8
PARAMS = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)


class _SlowCall:
    """An Admit call answered `ADMIT_DELAY_S` late (cancel still reaches the real call)."""

    def __init__(self, call: Any) -> None:
        self.call = call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._answer().__await__()

    async def _answer(self) -> Any:
        await asyncio.sleep(ADMIT_DELAY_S)
        return await self.call

    def cancel(self) -> bool:
        return bool(self.call.cancel())


class _SlowAdmitStub:
    def __init__(self, stub: Any) -> None:
        self.stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def Admit(self, request: Any, **kwargs: Any) -> _SlowCall:
        return _SlowCall(self.stub.Admit(request, **kwargs))


class _Recording:
    """The router's policy, with what each decision saw of the decode workers' counts."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.placements: list[Placement] = []
        self.seen_in_flight: list[int] = []
        self.seen_prefill_tokens: list[int] = []

    def place(self, request: PlacementRequest, view: ClusterView) -> Placement:
        self.seen_in_flight.append(sum(w.in_flight for w in view.workers()))
        self.seen_prefill_tokens.append(sum(w.in_flight_prefill_tokens for w in view.workers()))
        placement = self.policy.place(request, view)
        self.placements.append(placement)
        return placement


def test_a_burst_spreads_over_the_pools_and_counts_return_to_zero() -> None:
    async def test(cluster: RouterCluster) -> None:
        generation = cluster.router.generation
        real_stub = generation.clients.stub
        generation.clients.stub = lambda address: _SlowAdmitStub(real_stub(address))  # type: ignore[method-assign]
        recording = _Recording(generation.policy)
        generation.policy = recording  # type: ignore[assignment]
        prompts = [[256, *((i * 17 + j) % 250 for j in range(40))] for i in range(BURST)]
        results = await asyncio.gather(*(cluster.generate(p, PARAMS) for p in prompts))
        assert all(len(tokens_of(r)) == PARAMS.max_tokens for r in results)

        assert len(recording.placements) == BURST
        # each decision saw the burst's earlier ones (both sides counted)
        assert recording.seen_in_flight == [2 * i for i in range(BURST)]
        # and the prompt tokens each prefill worker was given (no prefix hits: all of them)
        tokens = len(prompts[0])
        assert recording.seen_prefill_tokens == [tokens * i for i in range(BURST)]
        decode = Counter(p.decode for p in recording.placements)
        prefill = Counter(p.prefill for p in recording.placements)
        assert sorted(decode.values()) == [BURST // 2, BURST // 2], decode
        assert sorted(prefill.values()) == [BURST // 2, BURST // 2], prefill
        for record in cluster.router.registry.records():
            assert record.in_flight == 0, record.info.worker_id
            assert record.in_flight_prefill_tokens == 0, record.info.worker_id
        await cluster.all_blocks_free()

    run_cluster(
        test,
        ("prefill", "prefill", "decode", "decode"),
        router=router_config(placement="least-loaded"),
    )
