"""Rotary position embedding applied to the step's query and key, then the cache write, in
plain torch: the reference `cache_write.rope_and_write_kv_cache` is tested against.

The rotation is Hugging Face's (`rotate_half`: the two halves of each head, not interleaved
pairs), computed in the activation dtype with tables `cos_cache`/`sin_cache [max_pos, D]`
already in that dtype (the model's `RotaryEmbedding` builds them, llama3 scaling included).
"""

from __future__ import annotations

import torch

from .attention_ref import write_kv_cache


def apply_rope(
    x: torch.Tensor,  # [T, heads, D]
    cos: torch.Tensor,  # [T, 1, D]
    sin: torch.Tensor,  # [T, 1, D]
) -> torch.Tensor:  # [T, heads, D]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_and_write_kv_cache(
    query: torch.Tensor,  # [T, H, D]
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    positions: torch.Tensor,  # [T] int64
    cos_cache: torch.Tensor,  # [max_pos, D]
    sin_cache: torch.Tensor,  # [max_pos, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64
) -> torch.Tensor:  # [T, H, D]: the rotated query
    """Rotate query and key by their positions, store the rotated key and the value at
    each token's slot, and return the rotated query."""
    cos = cos_cache[positions][:, None, :]  # [T, 1, D]
    sin = sin_cache[positions][:, None, :]
    write_kv_cache(apply_rope(key, cos, sin), value, kv_cache, slot_mapping)
    return apply_rope(query, cos, sin)
