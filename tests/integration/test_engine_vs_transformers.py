"""The engine's greedy tokens equal transformers' `generate`, however it batches and caches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvferry import LLM, SamplingParams
from tests.integration.hf_models import hf_greedy, make_hf_model

PROMPT_LENS = (1, 3, 7, 16, 17, 31, 40, 64)
MAX_TOKENS = 12


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in PROMPT_LENS]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "mistral"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> list[list[int]]:
    vocab = _vocab(checkpoint)
    return [hf_greedy(checkpoint, p, MAX_TOKENS) for p in _prompts(vocab)]


def _vocab(path: Path) -> int:
    import json

    return int(json.loads((path / "config.json").read_text())["vocab_size"])


# Both sides stop at the model's EOS (and include it), so EOS handling is compared too.
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)

ENGINE_VARIANTS = {
    "default": {},
    "no-prefix-cache": {"enable_prefix_caching": False},
    "chunked-tiny-budget": {"max_num_batched_tokens": 8},
    "forced-preemption": {"num_kv_blocks": 24, "block_size": 4},
    "block-4-no-chunking": {"block_size": 4, "enable_chunked_prefill": False},
}


@pytest.mark.parametrize("variant", list(ENGINE_VARIANTS))
def test_batched_greedy_matches_transformers(
    checkpoint: Path, reference: list[list[int]], variant: str
) -> None:
    args = {
        "tokenizer": "byte",
        "dtype": "float32",
        "max_model_len": 128,
        **ENGINE_VARIANTS[variant],
    }
    llm = LLM(model=str(checkpoint), **args)
    prompts = _prompts(_vocab(checkpoint))
    outs = llm.generate(prompts, GREEDY)
    for i, (out, ref) in enumerate(zip(outs, reference, strict=True)):
        assert out.token_ids == ref, f"prompt {i} (len {len(prompts[i])}) diverged"
    stats = llm.engine.stats()
    assert stats.free_blocks == stats.total_blocks
    assert stats.num_running == stats.num_waiting == 0
    llm.engine.kv.pool.check_invariants()
    if variant == "forced-preemption":
        assert llm.engine.kv.pool.num_blocks == 24


def test_prefix_cache_hit_on_repeated_prompt(checkpoint: Path, reference: list[list[int]]) -> None:
    llm = LLM(model=str(checkpoint), tokenizer="byte", dtype="float32", max_model_len=128)
    prompt = _prompts(_vocab(checkpoint))[-1]  # 64 tokens = 4 full blocks of 16
    first = llm.generate([prompt], GREEDY)[0]
    second = llm.generate([prompt], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 48  # the last block is recomputed for its logits
    assert second.token_ids == first.token_ids == reference[-1]
