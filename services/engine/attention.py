"""Attention over the paged KV cache for one model step, and the explicit backend choice.

The model runner lays the step's tokens out flat: every decode sequence first (exactly one
new token each, in order), then each prefill span (a whole prompt, a chunk of one, or the
tail after a prefix-cache hit). `AttentionMetadata` describes that layout once per step;
every layer reuses it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from kvferry.kernels import attention_ref


class AttentionBackend(enum.Enum):
    """Which implementation runs paged attention; chosen by configuration, never by env."""

    TORCH = "torch"


@dataclass(frozen=True, slots=True)
class PrefillSpan:
    """One sequence's prefill tokens in the flat token dimension."""

    query_start: int  # index of its first token in the flat dimension
    query_len: int  # new tokens this step, at positions context_len - query_len ..
    context_len: int  # tokens cached after this step, including the new ones
    block_table: torch.Tensor  # [nb] int64, covering context_len


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each of them attends to."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each token
    num_decode_tokens: int  # D: the first D tokens are decodes, one per sequence
    decode_block_tables: torch.Tensor  # [D, max_blocks] int64, padded with 0
    decode_context_lens: torch.Tensor  # [D] int64, including the new token
    prefills: list[PrefillSpan]


def attention_forward(
    backend: AttentionBackend,
    query: torch.Tensor,  # [T, H, D]
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    meta: AttentionMetadata,
    scale: float,
    *,
    sliding_window: int | None = None,
) -> torch.Tensor:  # [T, H, D]
    """Write this step's K/V into the cache, then attend for every decode and prefill token."""
    if backend is not AttentionBackend.TORCH:
        raise NotImplementedError(f"attention backend {backend.value!r} is not available")
    attention_ref.write_kv_cache(key, value, kv_cache, meta.slot_mapping)
    out = torch.empty_like(query)  # [T, H, D]
    num_decode = meta.num_decode_tokens
    if num_decode:
        out[:num_decode] = attention_ref.paged_decode_attention(
            query[:num_decode],
            kv_cache,
            meta.decode_block_tables,
            meta.decode_context_lens,
            scale,
            sliding_window=sliding_window,
        )
    for span in meta.prefills:
        end = span.query_start + span.query_len
        out[span.query_start : end] = attention_ref.paged_prefill_attention(
            query[span.query_start : end],
            kv_cache,
            span.block_table,
            span.context_len,
            scale,
            sliding_window=sliding_window,
        )
    return out
