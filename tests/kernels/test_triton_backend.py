"""The engine's TRITON attention backend gives what the TORCH backend gives: one mixed
step through `attention_forward`, and greedy tokens of the tiny model end to end.

On CPU the kernels run under TRITON_INTERPRET=1 (conftest.py), so the worlds are small.
"""

from __future__ import annotations

import torch

from kvferry import LLM, SamplingParams
from kvferry.services.engine.attention import (
    AttentionBackend,
    AttentionMetadata,
    PrefillBatch,
    PrefillSpan,
    attention_forward,
)
from tests.kernels.paged_world import DEVICE, PagedWorld, padded_tables


def test_attention_forward_mixed_step_matches_torch_backend() -> None:
    """Two decodes, a fresh prompt and a chunk after a cached prefix, in one step."""
    world = PagedWorld(
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        block_size=4,
        num_blocks=24,
        dtype=torch.float32,
        seed=0,
    )
    plan = [(6, 1), (9, 1), (5, 5), (14, 6)]  # (context after this step, new tokens)
    tables = [world.add_sequence(ctx - new) if ctx > new else [] for ctx, new in plan]
    tables = [t + [world.free.pop() for _ in range(4 - len(t))] for t in tables]
    total = sum(new for _, new in plan)
    key, value = world.randn(total, 2, 16), world.randn(total, 2, 16)
    query = world.randn(total, 4, 16)
    spans = [
        PrefillSpan(2, 5, 5, torch.tensor(tables[2], device=DEVICE)),
        PrefillSpan(7, 6, 14, torch.tensor(tables[3], device=DEVICE)),
    ]
    meta = AttentionMetadata(
        slot_mapping=torch.cat(
            [world.slots(t, c - n, c) for t, (c, n) in zip(tables, plan, strict=True)]
        ),
        num_decode_tokens=2,
        decode_block_tables=padded_tables(tables[:2], torch.int64),
        decode_context_lens=torch.tensor([6, 9], device=DEVICE),
        prefills=spans,
        prefill_batch=PrefillBatch.from_spans(spans, DEVICE),
    )
    torch_cache = world.cache.clone()

    out = attention_forward(AttentionBackend.TRITON, query, key, value, world.cache, meta, 0.25)
    expected = attention_forward(AttentionBackend.TORCH, query, key, value, torch_cache, meta, 0.25)

    torch.testing.assert_close(world.cache, torch_cache, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=2e-5)


def test_tiny_model_greedy_tokens_match_torch_backend() -> None:
    # A shared 32-token prefix (a prefix-cache hit for the later prompt), prompts that are
    # not block multiples, and a token budget that chunks the longest prompt.
    shared = [(7 * i + 3) % 256 for i in range(32)]
    prompts = [[72, 101, 108], [*shared, 1, 2, 3, 4, 5], [*shared, *[9] * 9]]
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    args = {"dtype": "float32", "device": "cpu", "max_model_len": 96}
    args |= {"max_num_batched_tokens": 24, "num_kv_blocks": 32}
    tokens = {}
    for backend in ("torch", "triton"):
        llm = LLM("tiny", attention_backend=backend, **args)
        assert llm.engine.attention_backend is AttentionBackend(backend)
        first = llm.generate(prompts[:2], greedy)
        last = llm.generate(prompts[2:], greedy)
        assert last[0].num_cached_tokens == 32
        tokens[backend] = [o.token_ids for o in first + last]
    assert tokens["triton"] == tokens["torch"]
