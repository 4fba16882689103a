"""Prefill on one engine, decode on another, KV handed over in process: outputs equal a
colocated run, only the blocks the decode side lacks move, and both pools drain."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kvferry import LLM, LLMEngine, SamplingParams
from kvferry.errors import TransferError
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.model_runner import KVExport
from kvferry.services.engine.outputs import RequestOutput

CONFIG = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=64)


@pytest.fixture()
def pair() -> tuple[LLMEngine, LLMEngine]:
    return LLMEngine(CONFIG), LLMEngine(CONFIG)


def disaggregated(
    prefill: LLMEngine, decode: LLMEngine, rid: str, prompt: list[int], params: SamplingParams
) -> tuple[list[int], int]:
    """Run one request the disaggregated way; returns (output ids, block-layers moved)."""
    admission = decode.admit_remote(rid, prompt, params)
    assert admission is not None
    moved = 0

    def sink(layer: int, kv: torch.Tensor) -> None:
        nonlocal moved
        moved += kv.shape[1]
        decode.write_remote_kv(rid, admission.needed_block_positions, layer, kv[None])

    export = KVExport(admission.needed_block_positions, sink)
    prefill.add_request(rid, prompt, replace(params, max_tokens=1), kv_export=export)
    first: list[RequestOutput] = []
    for _ in range(50):
        first += [o for o in prefill.step() if o.finished]
        if not prefill.has_unfinished_requests():
            break
    (done,) = first
    outs = [decode.complete_remote(rid, done.token_ids[0])]
    for _ in range(500):
        if not decode.has_unfinished_requests():
            break
        outs += decode.step()
    tokens = [t for o in outs for t in o.new_token_ids]
    assert outs[-1].finished and outs[-1].token_ids == tokens
    return tokens, moved


def _drained(*engines: LLMEngine) -> None:
    for engine in engines:
        stats = engine.stats()
        assert stats.free_blocks == stats.total_blocks
        engine.kv.pool.check_invariants()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True),
    ],
    ids=["greedy", "seeded"],
)
def test_disaggregated_equals_colocated(
    pair: tuple[LLMEngine, LLMEngine], params: SamplingParams
) -> None:
    prompts = [[256, *range(65, 65 + n)] for n in (1, 5, 15, 16, 31, 47)]
    colocated = [o.token_ids for o in LLM(**_kwargs()).generate(prompts, params)]
    prefill, decode = pair
    for i, prompt in enumerate(prompts):
        tokens, _ = disaggregated(prefill, decode, f"r{i}", prompt, params)
        assert tokens == colocated[i], f"prompt {i} diverged"
    _drained(prefill, decode)


def test_only_blocks_the_decode_side_lacks_are_moved(pair: tuple[LLMEngine, LLMEngine]) -> None:
    prefill, decode = pair
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    shared = [256, *range(1, 64)]  # 64 tokens = 4 full blocks
    layers = decode.model_config.num_hidden_layers
    _, first_moved = disaggregated(prefill, decode, "a", [*shared, 7, 8, 9], greedy)
    _, second_moved = disaggregated(prefill, decode, "b", [*shared, 4, 5], greedy)
    assert first_moved == 5 * layers  # 67 tokens: 5 blocks
    assert second_moved == 1 * layers  # the 4 shared blocks are cached on the decode side
    _drained(prefill, decode)


def test_incomplete_or_foreign_kv_is_refused_and_abort_frees(
    pair: tuple[LLMEngine, LLMEngine],
) -> None:
    prefill, decode = pair
    params = SamplingParams(max_tokens=4, temperature=0.0)
    admission = decode.admit_remote("r", [256, *range(40)], params)
    assert admission is not None and admission.needed_block_positions == [0, 1, 2]
    layout = decode.cache_layout
    block = torch.zeros(1, 2, 1, layout.block_size, layout.num_kv_heads, layout.head_dim)
    decode.write_remote_kv("r", [0], 0, block)
    with pytest.raises(TransferError, match="still lacks KV"):
        decode.complete_remote("r", 5)
    with pytest.raises(TransferError, match="not requested"):
        decode.write_remote_kv("r", [7], 0, block)
    with pytest.raises(TransferError, match="layers"):
        decode.write_remote_kv("r", [0], layout.num_layers, block)
    with pytest.raises(TransferError, match="shape"):
        decode.write_remote_kv("r", [0, 1], 0, block)
    with pytest.raises(TransferError, match="not waiting"):
        decode.write_remote_kv("nobody", [0], 0, block)
    assert decode.stats().used_blocks == 3
    assert decode.abort("r")
    # A request admitted but never completed does not leave blocks in the prefix cache.
    assert decode.stats().cached_blocks == 0
    _drained(prefill, decode)


def test_admission_refused_when_the_pool_is_full() -> None:
    decode = LLMEngine(replace(CONFIG, num_kv_blocks=4))
    params = SamplingParams(max_tokens=4, temperature=0.0)
    assert decode.admit_remote("a", [256] * 40, params) is not None  # 3 blocks
    assert decode.admit_remote("b", [257] * 40, params) is None
    assert decode.stats().used_blocks == 3
    assert decode.abort("a")
    _drained(decode)


def _kwargs() -> dict[str, object]:
    return {"model": "tiny", "max_model_len": 256, "num_kv_blocks": 64}
