"""Decode-only steps replayed as CUDA graphs, one graph per batch-size bucket.

A decode step of a small batch launches hundreds of short kernels; replaying them as one
captured graph removes the per-launch CPU cost that otherwise dominates. A graph replays
fixed addresses and shapes, so every input lives in a static buffer: a batch of `n`
sequences is padded to the smallest bucket >= n (1, 2, 4, ..., max_batch) and its inputs
are copied into the buffers' first rows before the replay.

Each bucket is captured the first time a batch of its size runs (after one eager warm-up
run that compiles the Triton kernels and lets cuBLAS pick its kernels). All graphs share one
memory pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .attention import AttentionMetadata
from .model.llama import LlamaForCausalLM


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two below `max_batch`, then `max_batch` itself: [1, 2, 4, ..., max_batch]."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    """Captured decode steps of one model over its KV caches, keyed by batch bucket."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[torch.Tensor],
        *,
        max_batch: int,
        max_blocks_per_seq: int,
        device: torch.device,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.buckets = batch_buckets(max_batch)
        self.max_blocks_per_seq = max_blocks_per_seq
        # [4, max_batch]: input ids, positions, slots, context lengths (one copy per step)
        self._scalars = torch.zeros(4, max_batch, dtype=torch.long, device=device)
        self._scalars[3].fill_(1)
        # [max_batch, max_blocks_per_seq]. NOTE: only the columns a step uses are refreshed;
        # stale entries past a sequence's length are never read (the kernel masks them).
        self._tables = torch.zeros(max_batch, max_blocks_per_seq, dtype=torch.int32, device=device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()  # one memory pool for every bucket

    @property
    def captured(self) -> list[int]:
        """Buckets captured so far."""
        return sorted(self._graphs)

    def fits(self, num_seqs: int, max_blocks: int) -> bool:
        return 1 <= num_seqs <= self.buckets[-1] and max_blocks <= self.max_blocks_per_seq

    def run(
        self,
        input_ids: Sequence[int],  # [n]
        positions: Sequence[int],  # [n]
        slots: Sequence[int],  # [n]
        block_tables: Sequence[Sequence[int]],  # n tables
    ) -> torch.Tensor:  # [n, hidden], final norm applied
        """One decode step for n sequences (each at `positions[i]`, context positions + 1)."""
        num_seqs = len(input_ids)
        width = max(len(t) for t in block_tables)
        if not self.fits(num_seqs, width):
            raise ValueError(f"a batch of {num_seqs} x {width} blocks does not fit the graphs")
        bucket = next(b for b in self.buckets if b >= num_seqs)
        pad = bucket - num_seqs
        # NOTE: padding rows write their K/V nowhere (slot -1: the Triton cache write skips
        # negative slots) and attend over one token of block 0; their outputs are dropped.
        scalars = torch.tensor(
            [
                [*input_ids, *[0] * pad],
                [*positions, *[0] * pad],
                [*slots, *[-1] * pad],
                [*(p + 1 for p in positions), *[1] * pad],
            ],
            dtype=torch.long,
        )
        rows = [*block_tables, *[[0]] * pad]
        tables = torch.tensor([[*t, *[0] * (width - len(t))] for t in rows], dtype=torch.int32)
        self._scalars[:, :bucket].copy_(scalars)
        self._tables[:bucket, :width].copy_(tables)
        entry = self._graphs.get(bucket)
        if entry is None:
            entry = self._capture(bucket)
        graph, hidden = entry
        graph.replay()
        return hidden[:num_seqs]

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        meta = AttentionMetadata(
            slot_mapping=self._scalars[2, :bucket],
            num_decode_tokens=bucket,
            decode_block_tables=self._tables[:bucket],
            decode_context_lens=self._scalars[3, :bucket],
            prefills=[],
        )

        def step() -> torch.Tensor:
            out: torch.Tensor = self.model(
                self._scalars[0, :bucket], self._scalars[1, :bucket], self.kv_caches, meta
            )
            return out

        # The warm-up runs the real step (its K/V writes are the ones the replay repeats).
        step()
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # NOTE: thread_local: only this (the engine) thread must avoid capture-unsafe calls;
        # a server thread touching CUDA meanwhile (say, staging received KV) is not an error.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            hidden = step()
        self._graphs[bucket] = (graph, hidden)
        return graph, hidden
