"""The model runner hands decode-only steps, and only those, to its CUDA-graph runner, with
the inputs the eager path would use. On CPU a stand-in computes the step eagerly from
exactly what it is given, so the tokens must equal a run without it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from kvferry import LLM, SamplingParams
from kvferry.services.engine.attention import AttentionMetadata
from kvferry.services.engine.cuda_graphs import DecodeGraphs
from kvferry.services.engine.model.llama import LlamaForCausalLM


class EagerStandIn:
    """DecodeGraphs' interface, computing each step eagerly; records batch sizes."""

    def __init__(self, model: LlamaForCausalLM, kv_caches: list[torch.Tensor]) -> None:
        self.model, self.kv_caches = model, kv_caches
        self.batches: list[int] = []

    def fits(self, num_seqs: int, max_blocks: int) -> bool:
        return num_seqs <= 4

    def run(
        self,
        input_ids: Sequence[int],
        positions: Sequence[int],
        slots: Sequence[int],
        block_tables: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        self.batches.append(len(input_ids))
        width = max(len(t) for t in block_tables)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots),
            num_decode_tokens=len(input_ids),
            decode_block_tables=torch.tensor([[*t, *[0] * (width - len(t))] for t in block_tables]),
            decode_context_lens=torch.tensor([p + 1 for p in positions]),
            prefills=[],
        )
        out: torch.Tensor = self.model(
            torch.tensor(input_ids), torch.tensor(positions), self.kv_caches, meta
        )
        return out


def test_decode_only_steps_go_to_the_graph_runner() -> None:
    prompts = [[5, 6, 7], [1] * 20, [9, 8, 7, 6, 5, 4, 3, 2, 1], [42] * 33, [3, 3]]
    greedy = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    args = {"device": "cpu", "dtype": "float32", "max_model_len": 128}

    plain = LLM("tiny", **args)
    routed = LLM("tiny", **args)
    runner = routed.engine.runner
    stand_in = EagerStandIn(runner.model, runner.kv_caches)
    runner.decode_graphs = cast(DecodeGraphs, stand_in)

    expected = [o.token_ids for o in plain.generate(prompts, greedy)]
    assert [o.token_ids for o in routed.generate(prompts, greedy)] == expected
    # Step 1 prefills all five; then 4 decode steps of 5 sequences do not fit (> 4).
    assert stand_in.batches == []
    assert [o.token_ids for o in routed.generate(prompts[:3], greedy)] == expected[:3]
    assert stand_in.batches == [3, 3, 3, 3]  # the prefill step stays eager
