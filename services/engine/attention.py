"""Attention over the paged KV cache for one model step, and the explicit backend choice.

The model runner lays the step's tokens out flat: every decode sequence first (exactly one
new token each, in order), then each prefill span (a whole prompt, a chunk of one, or the
tail after a prefix-cache hit). `AttentionMetadata` describes that layout once per step;
every layer reuses it.

Backends: `TORCH` runs the references in `kernels/attention_ref.py` (CPU, and any device);
`TRITON` runs the Triton kernels (CUDA; on CPU only under `TRITON_INTERPRET=1`, for tests).
The engine resolves `EngineConfig.attention_backend` to one of them once, at start-up.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvferry.kernels import attention_ref


class AttentionBackend(enum.Enum):
    """Which implementation runs paged attention; chosen by configuration, never by env."""

    TORCH = "torch"
    TRITON = "triton"


@dataclass(frozen=True, slots=True)
class PrefillSpan:
    """One sequence's prefill tokens in the flat token dimension."""

    query_start: int  # index of its first token in the flat dimension
    query_len: int  # new tokens this step, at positions context_len - query_len ..
    context_len: int  # tokens cached after this step, including the new ones
    block_table: torch.Tensor  # [nb] int64, covering context_len


@dataclass(frozen=True, slots=True)
class PrefillBatch:
    """Every prefill span of a step as device tensors, for one varlen kernel launch."""

    query_starts: torch.Tensor  # [N + 1] int32, absolute rows in the flat dimension
    context_lens: torch.Tensor  # [N] int32
    block_tables: torch.Tensor  # [N, max_blocks] int32, padded with 0
    max_query_len: int

    @classmethod
    def build(
        cls,
        query_starts: Sequence[int],  # [N + 1]
        context_lens: Sequence[int],  # [N]
        block_tables: Sequence[Sequence[int]],  # N tables, any lengths
        device: torch.device,
    ) -> PrefillBatch:
        if len(query_starts) != len(context_lens) + 1 or len(block_tables) != len(context_lens):
            raise ValueError("a prefill batch needs N + 1 query starts, N lengths and N tables")
        lens = [b - a for a, b in itertools.pairwise(query_starts)]
        if any(n < 1 for n in lens) or any(n > c for n, c in zip(lens, context_lens, strict=True)):
            raise ValueError(f"bad prefill spans: query lengths {lens}, contexts {context_lens}")
        width = max((len(t) for t in block_tables), default=1)
        tables = [list(t) + [0] * (width - len(t)) for t in block_tables]
        return cls(
            query_starts=torch.tensor(query_starts, dtype=torch.int32, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device).view(
                len(tables), width
            ),
            max_query_len=max(lens, default=0),
        )

    @classmethod
    def from_spans(cls, spans: Sequence[PrefillSpan], device: torch.device) -> PrefillBatch:
        """Spans must lie back to back in the flat dimension, in order."""
        starts = [s.query_start for s in spans]
        for before, after in itertools.pairwise(spans):
            if after.query_start != before.query_start + before.query_len:
                raise ValueError("prefill spans must be contiguous and in order")
        if spans:
            starts.append(spans[-1].query_start + spans[-1].query_len)
        return cls.build(
            starts or [0],
            [s.context_len for s in spans],
            [s.block_table.tolist() for s in spans],
            device,
        )


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each of them attends to."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each token
    num_decode_tokens: int  # D: the first D tokens are decodes, one per sequence
    decode_block_tables: torch.Tensor  # [D, max_blocks] int64, padded with 0
    decode_context_lens: torch.Tensor  # [D] int64, including the new token
    prefills: list[PrefillSpan]
    prefill_batch: PrefillBatch | None = None
    """The spans as one varlen batch; the TRITON backend needs it when there are spans."""


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
    if backend is AttentionBackend.TRITON:
        return _forward_triton(query, key, value, kv_cache, meta, scale, sliding_window)
    return _forward_torch(query, key, value, kv_cache, meta, scale, sliding_window)


def _forward_torch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
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


def _forward_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    # NOTE: imported here, not at module level: triton is only needed by this backend
    # (CUDA builds of torch ship it; CPU installs get it from the `dev` extra, for tests).
    from kvferry.kernels.cache_write import write_kv_cache
    from kvferry.kernels.paged_decode_attention import paged_decode_attention
    from kvferry.kernels.paged_prefill_attention import paged_prefill_attention

    write_kv_cache(key, value, kv_cache, meta.slot_mapping)
    out = torch.empty_like(query)  # [T, H, D]
    num_decode = meta.num_decode_tokens
    if num_decode:
        paged_decode_attention(
            query[:num_decode],
            kv_cache,
            meta.decode_block_tables,
            meta.decode_context_lens,
            scale,
            sliding_window=sliding_window,
            out=out[:num_decode],
        )
    if meta.prefills:
        batch = meta.prefill_batch
        if batch is None:
            raise ValueError("the triton attention backend needs AttentionMetadata.prefill_batch")
        paged_prefill_attention(
            query,
            kv_cache,
            batch.block_tables,
            batch.query_starts,
            batch.context_lens,
            batch.max_query_len,
            scale,
            sliding_window=sliding_window,
            out=out,
        )
    return out
