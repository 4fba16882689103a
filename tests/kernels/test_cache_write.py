"""The Triton cache-write kernels (plain, and with RoPE fused) against their torch references.

Runs on CUDA when present, else on CPU tensors under TRITON_INTERPRET=1 (conftest.py).
Caches start as NaN: a slot the kernel should not touch stays NaN, a slot it should write
but does not stays NaN too, and both show up against the reference.
"""

from __future__ import annotations

import pytest
import torch

from kvferry.kernels import attention_ref, cache_write, rope_ref
from kvferry.services.engine.model.llama import RotaryEmbedding, _rotate
from kvferry.services.engine.model.model_config import ModelConfig, RopeScaling

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# NOTE: the interpreter truncates float32 -> bfloat16 (GPUs round to nearest): bf16 on GPU only.
DTYPES = [torch.float32, torch.float16, *([torch.bfloat16] if DEVICE.type == "cuda" else [])]
NUM_BLOCKS, BLOCK_SIZE = 8, 4

# (tokens, query heads, kv heads, head_dim): one token, a length that is not a block
# multiple, a single KV head (GQA 4:1), equal heads.
CASES = [(1, 2, 1, 8), (7, 4, 1, 16), (10, 4, 2, 8), (5, 2, 2, 32)]


def split_qkv(
    tokens: int, heads: int, kv_heads: int, dim: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the model makes them: strided views of one fused projection."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype).to(DEVICE)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    return (
        q.reshape(tokens, heads, dim),
        k.reshape(tokens, kv_heads, dim),
        v.reshape(tokens, kv_heads, dim),
    )


def slots(tokens: int, seed: int) -> torch.Tensor:
    """Distinct slots scattered over shuffled blocks (out of order, never contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=gen)[:tokens].to(DEVICE)


def poisoned(kv_heads: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    shape = (2, NUM_BLOCKS, BLOCK_SIZE, kv_heads, dim)
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and bool(
        torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_write_matches_reference(case: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    tokens, heads, kv_heads, dim = case
    _, key, value = split_qkv(tokens, heads, kv_heads, dim, dtype, seed=tokens)
    slot_mapping = slots(tokens, seed=dim)
    got, expected = poisoned(kv_heads, dim, dtype), poisoned(kv_heads, dim, dtype)
    cache_write.write_kv_cache(key, value, got, slot_mapping)
    attention_ref.write_kv_cache(key, value, expected, slot_mapping)
    assert same(got, expected)
    flat = got.view(2, -1, kv_heads, dim)
    assert torch.equal(flat[1, slot_mapping], value)  # independent of the reference
    assert int(torch.isnan(flat[0]).any(dim=(1, 2)).sum()) == NUM_BLOCKS * BLOCK_SIZE - tokens


def test_write_casts_to_the_cache_dtype_and_skips_negative_slots() -> None:
    _, key, value = split_qkv(6, 2, 2, 8, torch.float32, seed=3)
    slot_mapping = slots(6, seed=4)
    padded = slot_mapping.clone()
    padded[[1, 4]] = -1  # padding rows of a fixed-size batch
    got = poisoned(2, 8, torch.float16)
    cache_write.write_kv_cache(key, value, got, padded)
    keep = torch.tensor([0, 2, 3, 5], device=DEVICE)
    expected = poisoned(2, 8, torch.float16)
    attention_ref.write_kv_cache(key[keep], value[keep], expected, slot_mapping[keep])
    assert same(got, expected)


def test_write_bad_arguments() -> None:
    _, key, value = split_qkv(3, 2, 2, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match="must be \\[T, 1, 8\\]"):
        cache_write.write_kv_cache(key, value, poisoned(1, 8, torch.float32), slots(3, 0))
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        cache_write.write_kv_cache(key, value, poisoned(2, 8, torch.float32), slots(3, 0).int())


def rope_tables(dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own cos/sin tables, llama3 scaling included (all three bands occur)."""
    config = ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=16,
        hidden_size=4 * dim,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=dim,
        rms_norm_eps=1e-6,
        rope_theta=500000.0,
        max_position_embeddings=128,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
    )
    rotary = RotaryEmbedding(config).to(dtype=dtype, device=DEVICE)
    return rotary.cos_cache, rotary.sin_cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_rope_and_write_matches_reference(
    case: tuple[int, int, int, int], dtype: torch.dtype
) -> None:
    tokens, heads, kv_heads, dim = case
    query, key, value = split_qkv(tokens, heads, kv_heads, dim, dtype, seed=tokens + 1)
    gen = torch.Generator().manual_seed(dim)
    positions = torch.randint(0, 128, (tokens,), generator=gen).to(DEVICE)
    positions[0] = 127  # the last row of the tables
    cos, sin = rope_tables(dim, dtype)
    slot_mapping = slots(tokens, seed=heads)
    got, expected = poisoned(kv_heads, dim, dtype), poisoned(kv_heads, dim, dtype)
    poisoned_q = torch.full(query.shape, float("nan"), dtype=dtype, device=DEVICE)
    got_q = cache_write.rope_and_write_kv_cache(
        query, key, value, positions, cos, sin, got, slot_mapping, out=poisoned_q
    )
    assert got_q is poisoned_q
    expected_q = rope_ref.rope_and_write_kv_cache(
        query, key, value, positions, cos, sin, expected, slot_mapping
    )
    assert same(got_q, expected_q)
    assert same(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_reference_is_the_models_rotation(dtype: torch.dtype) -> None:
    query, _, _ = split_qkv(5, 4, 1, 16, dtype, seed=9)
    cos, sin = rope_tables(16, dtype)
    positions = torch.tensor([0, 3, 64, 100, 127], device=DEVICE)
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    assert torch.equal(rope_ref.apply_rope(query, c, s), _rotate(query, c, s))


def test_rope_and_write_skips_negative_slots_but_rotates_every_query() -> None:
    query, key, value = split_qkv(4, 2, 1, 8, torch.float32, seed=5)
    cos, sin = rope_tables(8, torch.float32)
    positions = torch.tensor([0, 1, 2, 3], device=DEVICE)
    slot_mapping = torch.tensor([5, -1, 9, -1], device=DEVICE)
    got = poisoned(1, 8, torch.float32)
    got_q = cache_write.rope_and_write_kv_cache(
        query, key, value, positions, cos, sin, got, slot_mapping
    )
    keep = torch.tensor([0, 2], device=DEVICE)
    expected = poisoned(1, 8, torch.float32)
    rope_ref.rope_and_write_kv_cache(
        query[keep], key[keep], value[keep], positions[keep], cos, sin, expected, slot_mapping[keep]
    )
    assert same(got, expected)
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    assert same(got_q, rope_ref.apply_rope(query, c, s))
