"""Paged prefill attention in Triton: every prefill span of a step in one launch.

Each span is the `q_len` newest tokens of one sequence, at positions
`context_len - q_len .. context_len - 1`; they attend causally over the whole sequence,
including blocks cached before this step (a prefix-cache hit or earlier prefill chunks).
Per span this is `attention_ref.paged_prefill_attention`. Their own K/V must already be in
the cache.

Layout is varlen: queries of all spans lie back to back in one `[T, H, D]` tensor;
`query_starts[i] .. query_starts[i + 1]` are span i's rows, `context_lens[i]` its length
after this step and `block_tables[i]` its blocks. One program computes one tile of
`BLOCK_M` query rows of one head of one span (flash-attention's online softmax). Key tiles
entirely below the tile's first query position need no causal mask and run in a separate,
cheaper loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    q_ptr,  # [T, H, D]
    kv_ptr,  # [2, NB, BS, Hkv, D]
    block_tables_ptr,  # [N, W]
    query_starts_ptr,  # [N + 1]
    context_lens_ptr,  # [N]
    out_ptr,  # [T, H, D]
    scale_log2,  # softmax scale * log2(e)
    window,  # sliding window in tokens (HAS_WINDOW)
    head_dim,
    group,  # query heads per KV head
    stride_qt,
    stride_qh,
    stride_kv,
    stride_blk,
    stride_tok,
    stride_kvh,
    stride_btb,
    stride_ot,
    stride_oh,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner tile
    BLOCK_D: tl.constexpr,  # head_dim, padded to a power of two
    HAS_WINDOW: tl.constexpr,
):
    # NOTE: the heaviest (last) query tiles of each span start first, so short tail work
    # fills the GPU at the end rather than a long tile running alone.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    span = tl.program_id(2)
    q_start = tl.load(query_starts_ptr + span).to(tl.int32)
    q_len = tl.load(query_starts_ptr + span + 1).to(tl.int32) - q_start
    if tile * BLOCK_M >= q_len:
        return
    context_len = tl.load(context_lens_ptr + span).to(tl.int32)
    first_pos = context_len - q_len + tile * BLOCK_M  # position of this tile's first row
    kv_head = head // group

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < head_dim
    q_pos = first_pos + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    q = tl.load(
        q_ptr + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = kv_ptr + kv_head * stride_kvh
    v_base = k_base + stride_kv
    table = block_tables_ptr + span * stride_btb
    hi = tl.minimum(first_pos + BLOCK_M, context_len)  # keys this tile can see: [.., hi)

    if HAS_WINDOW:
        lo = tl.maximum(first_pos - window + 1, 0) // BLOCK_N * BLOCK_N
        mid = lo
    else:
        # Every row sees keys 0 .. first_pos: whole tiles below it skip the mask.
        lo = 0
        mid = (first_pos + 1) // BLOCK_N * BLOCK_N
        for n0 in range(0, mid, BLOCK_N):
            pos = n0 + tl.arange(0, BLOCK_N)
            block = tl.load(table + pos // BLOCK_SIZE).to(tl.int64)
            rows = block * stride_blk + (pos % BLOCK_SIZE) * stride_tok  # [BLOCK_N]
            k = tl.load(k_base + rows[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + rows[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m_i = m_new

    for n0 in range(mid, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        valid = pos < hi
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = block * stride_blk + (pos % BLOCK_SIZE) * stride_tok
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2  # [BLOCK_M, BLOCK_N]
        seen = valid[None, :] & (pos[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            seen &= pos[None, :] > q_pos[:, None] - window
        qk = tl.where(seen, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # NOTE: a row may see nothing in this tile and nothing before (its window starts
        # later); exp2(-inf - -inf) would be NaN, so such a row keeps a zero reference.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(qk - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        out_ptr + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def paged_prefill_attention(
    query: torch.Tensor,  # [T, H, D], every span's tokens back to back
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    block_tables: torch.Tensor,  # [N, max_blocks] int32/int64, padded with any valid block id
    query_starts: torch.Tensor,  # [N + 1] int32/int64, span i = rows [starts[i], starts[i+1])
    context_lens: torch.Tensor,  # [N] int32/int64, each >= its span's query length
    max_query_len: int,  # the longest span (sizes the launch grid)
    scale: float,
    *,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,  # [T, H, D]; only the spans' rows are written
) -> torch.Tensor:  # [T, H, D]
    """Causal attention for every span's new tokens over its cached context; see the module
    docstring. Rows of `out` outside every span are left untouched."""
    num_spans = _check(query, kv_cache, block_tables, query_starts, context_lens)
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(2) != 1:
        raise ValueError(
            f"out must be a {tuple(query.shape)} {query.dtype} tensor with a contiguous last"
            f" dim, got {tuple(out.shape)} {out.dtype}"
        )
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    if num_spans == 0 or max_query_len == 0:
        return out
    if query.stride(2) != 1:
        query = query.contiguous()
    _, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    block_d = triton.next_power_of_2(head_dim)
    # NOTE: long spans take flash-attention's usual Hopper tile (128 x 64, 8 warps, 3
    # stages); short ones (chunks, tails after a prefix hit) a 64-row tile, so less of it
    # is padding. A starting point from the Triton tutorial's configurations, not tuned here.
    if block_d > 128:
        block_m, block_n, warps, stages = 32, 32, 4, 1
    elif max_query_len >= 128:
        block_m, block_n, warps, stages = 128, 64, 8, 3
    else:
        block_m, block_n, warps, stages = 64, 64, 4, 2
    grid = (triton.cdiv(max_query_len, block_m), num_heads, num_spans)
    _prefill_kernel[grid](
        query,
        kv_cache,
        block_tables,
        query_starts,
        context_lens,
        out,
        scale * LOG2_E,
        sliding_window or 0,
        head_dim,
        num_heads // num_kv_heads,
        query.stride(0),
        query.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        HAS_WINDOW=sliding_window is not None,
        num_warps=warps,
        num_stages=stages,
    )
    return out


def _check(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_starts: torch.Tensor,
    context_lens: torch.Tensor,
) -> int:
    if query.dim() != 3 or kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            f"expected query [T, H, D] and kv_cache [2, NB, BS, Hkv, D], got"
            f" {tuple(query.shape)} and {tuple(kv_cache.shape)}"
        )
    _, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    if kv_cache.shape[4] != head_dim or num_heads % num_kv_heads:
        raise ValueError(
            f"query {tuple(query.shape)} does not fit kv_cache {tuple(kv_cache.shape)}:"
            " head_dim must match and num_heads be a multiple of num_kv_heads"
        )
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must have a contiguous last dimension")
    num_spans = context_lens.shape[0] if context_lens.dim() == 1 else -1
    if num_spans < 0 or query_starts.shape != (num_spans + 1,):
        raise ValueError(
            f"context_lens must be [N] and query_starts [N + 1], got"
            f" {tuple(context_lens.shape)} and {tuple(query_starts.shape)}"
        )
    if block_tables.dim() != 2 or block_tables.shape[0] != num_spans:
        raise ValueError(
            f"block_tables must be [{num_spans}, max_blocks], got {tuple(block_tables.shape)}"
        )
    for name, t in (
        ("block_tables", block_tables),
        ("query_starts", query_starts),
        ("context_lens", context_lens),
    ):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if kv_cache.dtype != query.dtype:
        raise ValueError(f"query is {query.dtype} but kv_cache is {kv_cache.dtype}")
    tensors = (query, kv_cache, block_tables, query_starts, context_lens)
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    return num_spans
