"""Paged decode attention in Triton (flash-decoding): one query token per sequence.

Same contract as `attention_ref.paged_decode_attention`: query `[B, H, D]` at position
`context_len - 1` of each sequence attends over positions `0 .. context_len - 1` (the last
`sliding_window` of them when set), read from the paged cache `[2, NB, BS, Hkv, D]` through
each sequence's block table.

Work split: one program per (sequence, KV head, context split). A program loads the whole
GQA group of query heads that share its KV head (`H // Hkv` rows, padded to a tensor-core
tile), so every K/V byte is read once per group, not once per query head. Long contexts are
cut into `num_splits` ranges processed in parallel; each writes a partial output and its
log-sum-exp, and a second kernel merges them. With one split the first kernel writes the
final output directly.

`num_splits` depends only on shapes (batch, KV heads, block-table width), never on values,
so a CUDA graph captured for one batch bucket replays with any context lengths.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634
MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more in the merge than it saves
MAX_SPLITS = 32


@triton.jit
def _decode_split_kernel(
    q_ptr,  # [B, H, D]
    kv_ptr,  # [2, NB, BS, Hkv, D]
    block_tables_ptr,  # [B, W]
    context_lens_ptr,  # [B]
    out_ptr,  # [B, H, D] (DIRECT) or unused
    part_ptr,  # [B, H, S, D] float32 partial outputs (not DIRECT)
    lse_ptr,  # [B, H, S] float32 log2-sum-exp of each split (not DIRECT)
    scale_log2,  # softmax scale * log2(e)
    window,  # sliding window in tokens (HAS_WINDOW)
    num_heads,
    head_dim,
    group,  # query heads per KV head
    stride_qb,
    stride_qh,
    stride_kv,
    stride_blk,
    stride_tok,
    stride_kvh,
    stride_btb,
    stride_ob,
    stride_oh,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_H: tl.constexpr,  # query rows per program (group, padded)
    BLOCK_N: tl.constexpr,  # tokens per inner tile
    BLOCK_D: tl.constexpr,  # head_dim, padded to a power of two
    NUM_SPLITS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DIRECT: tl.constexpr,  # one split: write the normalised output, no partials
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    context_len = tl.load(context_lens_ptr + seq).to(tl.int32)
    start = 0
    if HAS_WINDOW:
        start = tl.maximum(context_len - window, 0)
    # NOTE: each sequence cuts its own span into NUM_SPLITS tile-aligned chunks; a short
    # sequence leaves its last splits empty (they write lse = -inf and weigh nothing).
    chunk = tl.cdiv(tl.cdiv(context_len - start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = start + split * chunk
    hi = tl.minimum(lo + chunk, context_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * group + offs_h  # [BLOCK_H]
    h_mask = offs_h < group
    d_mask = offs_d < head_dim
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=h_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_H, BLOCK_D]

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    k_base = kv_ptr + kv_head * stride_kvh
    v_base = k_base + stride_kv
    table = block_tables_ptr + seq * stride_btb
    for n0 in range(lo, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        valid = pos < hi
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = block * stride_blk + (pos % BLOCK_SIZE) * stride_tok  # [BLOCK_N]
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2  # [BLOCK_H, BLOCK_N]
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: the tile holds a valid position
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # an empty split has l = 0 and acc = 0
    acc = acc / l_safe[:, None]
    store_mask = h_mask[:, None] & d_mask[None, :]
    if DIRECT:
        out = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        row = (seq * num_heads + heads) * NUM_SPLITS + split  # [BLOCK_H]
        tl.store(part_ptr + row[:, None] * head_dim + offs_d[None, :], acc, mask=store_mask)
        tl.store(lse_ptr + row, m_i + tl.log2(l_safe), mask=h_mask)


@triton.jit
def _decode_merge_kernel(
    part_ptr,  # [B, H, S, D] float32
    lse_ptr,  # [B, H, S] float32
    out_ptr,  # [B, H, D]
    num_heads,
    head_dim,
    stride_ob,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    d_mask = offs_d < head_dim
    row = (seq * num_heads + head) * NUM_SPLITS + offs_s  # [BLOCK_S]
    lse = tl.load(lse_ptr + row, mask=s_mask, other=float("-inf"))
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(lse - top)  # [BLOCK_S], 0 for empty splits
    parts = tl.load(
        part_ptr + row[:, None] * head_dim + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_S, BLOCK_D]
    total = tl.maximum(tl.sum(weight, 0), 1e-30)
    out = tl.sum(parts * weight[:, None], 0) / total
    tl.store(
        out_ptr + seq * stride_ob + head * stride_oh + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d_mask,
    )


def paged_decode_attention(
    query: torch.Tensor,  # [B, H, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32/int64, padded with any valid block id
    context_lens: torch.Tensor,  # [B] int32/int64, each >= 1
    scale: float,
    *,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,  # [B, H, D], written in place when given
    num_splits: int | None = None,  # default: from shapes (see `choose_num_splits`)
) -> torch.Tensor:  # [B, H, D]
    """One query per sequence over its paged context; see the module docstring.

    NOTE: context lengths are not checked against the block tables (that would need a
    device-to-host sync, which CUDA graphs forbid); the caller guarantees each sequence's
    table covers its length.
    """
    num_seqs, num_heads, head_dim = _check(query, kv_cache, block_tables, context_lens)
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(2) != 1:
        raise ValueError(
            f"out must be a {tuple(query.shape)} {query.dtype} tensor with a contiguous last"
            f" dim, got {tuple(out.shape)} {out.dtype}"
        )
    if num_seqs == 0:
        return out
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = choose_num_splits(
            num_seqs, num_kv_heads, block_tables.shape[1] * block_size, query.device
        )
    elif num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if query.stride(2) != 1:
        query = query.contiguous()
    block_d = triton.next_power_of_2(head_dim)
    # NOTE: tl.dot needs at least 16 rows on tensor cores, so small groups are padded.
    block_h = max(16, triton.next_power_of_2(group))
    block_n = 64 if block_d <= 128 else 32
    direct = num_splits == 1
    if direct:
        part = lse = out  # unused by the kernel
    else:
        part = torch.empty(
            num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=query.device
        )
        lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=query.device)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        query,
        kv_cache,
        block_tables,
        context_lens,
        out,
        part,
        lse,
        scale * LOG2_E,
        sliding_window or 0,
        num_heads,
        head_dim,
        group,
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
        BLOCK_H=block_h,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        NUM_SPLITS=num_splits,
        HAS_WINDOW=sliding_window is not None,
        DIRECT=direct,
        num_warps=4,
        num_stages=2,
    )
    if not direct:
        _decode_merge_kernel[(num_seqs, num_heads)](
            part,
            lse,
            out,
            num_heads,
            head_dim,
            out.stride(0),
            out.stride(1),
            NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=block_d,
            num_warps=4,
        )
    return out


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device
) -> int:
    """Context splits per sequence: enough programs to fill the GPU twice over, but no split
    shorter than `MIN_SPLIT_TOKENS` of the longest possible context. Shapes only."""
    programs = num_seqs * num_kv_heads
    by_occupancy = math.ceil(2 * _num_sms(device) / programs)
    by_length = math.ceil(max_context / MIN_SPLIT_TOKENS)
    return max(1, min(MAX_SPLITS, by_occupancy, by_length))


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter (tests): a few splits exercise the merge path
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def _check(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> tuple[int, int, int]:
    if query.dim() != 3 or kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            f"expected query [B, H, D] and kv_cache [2, NB, BS, Hkv, D], got"
            f" {tuple(query.shape)} and {tuple(kv_cache.shape)}"
        )
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    if kv_cache.shape[4] != head_dim or num_heads % num_kv_heads:
        raise ValueError(
            f"query {tuple(query.shape)} does not fit kv_cache {tuple(kv_cache.shape)}:"
            " head_dim must match and num_heads be a multiple of num_kv_heads"
        )
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must have a contiguous last dimension")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be [{num_seqs}, max_blocks], got {tuple(block_tables.shape)}"
        )
    if context_lens.shape != (num_seqs,):
        raise ValueError(f"context_lens must be [{num_seqs}], got {tuple(context_lens.shape)}")
    for name, t in (("block_tables", block_tables), ("context_lens", context_lens)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if kv_cache.dtype != query.dtype:
        raise ValueError(f"query is {query.dtype} but kv_cache is {kv_cache.dtype}")
    devices = {t.device for t in (query, kv_cache, block_tables, context_lens)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    return num_seqs, num_heads, head_dim
