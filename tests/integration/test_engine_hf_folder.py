"""A real Hugging Face folder end to end: tokenizer.json, text prompts, dtypes, KV budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from kvferry import LLM, LLMEngine, SamplingParams
from kvferry.services.engine.cache_layout import block_bytes
from kvferry.services.engine.config import EngineConfig
from tests.integration.hf_models import hf_greedy, make_hf_model
from tests.unit.test_tokenizer import write_bpe_folder

PROMPTS = ["the cache moves", "décodage 解码 🚀", "prefill and decode are split across pools"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_hf_model(tmp_path_factory.mktemp("hf"), "qwen3", vocab_size=448, sharded=True)
    write_bpe_folder(path)
    return path


def test_text_prompts_through_tokenizer_json_match_transformers(folder: Path) -> None:
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    llm = LLM(model=str(folder), dtype="float32")
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=10, temperature=0.0))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids = hf_tok(prompt)["input_ids"]
        assert out.prompt_token_ids == ids
        assert out.token_ids == hf_greedy(folder, ids, 10)
        assert out.text == hf_tok.decode(out.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_and_frees_everything(folder: Path, dtype: str) -> None:
    llm = LLM(model=str(folder), dtype=dtype, num_kv_blocks=32)
    assert llm.engine.dtype == getattr(torch, dtype)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [6, 6, 6]
    stats = llm.engine.stats()
    assert stats.free_blocks == stats.total_blocks == 32


def test_kv_pool_is_sized_from_the_byte_budget_and_never_grows(folder: Path) -> None:
    config = transformers.AutoConfig.from_pretrained(folder)
    per_block = block_bytes(
        config.num_hidden_layers, config.num_key_value_heads, config.head_dim, 16, torch.float32
    )
    budget = 10 * per_block + per_block // 2
    engine = LLMEngine(
        EngineConfig(model=str(folder), dtype="float32", kv_cache_bytes=budget, max_model_len=200)
    )
    stats = engine.stats()
    assert stats.total_blocks == 10
    assert stats.kv_cache_bytes == 10 * per_block <= budget
    cache_bytes = sum(t.numel() * t.element_size() for t in engine.runner.kv_caches)
    assert cache_bytes == stats.kv_cache_bytes
    # More work than fits at once: requests are preempted and queued, the pool never grows.
    for i in range(6):
        engine.add_request(f"r{i}", [5 + i] * 60, SamplingParams(max_tokens=20, ignore_eos=True))
    peak = 0
    for _ in range(500):
        engine.step()
        peak = max(peak, engine.stats().used_blocks)
        if not engine.has_unfinished_requests():
            break
    assert not engine.has_unfinished_requests()
    assert peak == 10 == engine.stats().total_blocks
    assert engine.stats().free_blocks == 10
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add_request("huge", [1] * 170, SamplingParams(max_tokens=10))
