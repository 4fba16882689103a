"""Turns a `SchedulerOutput` into tensors, runs the model, and samples.

The flat token dimension holds decode sequences (one new token each) first, then each
prefill span, as `AttentionMetadata` expects. Logits are computed only at the last
position of sequences that sample this step. A decode-only step replays a captured CUDA
graph when the engine gave the runner `DecodeGraphs` (see cuda_graphs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .attention import AttentionBackend, AttentionMetadata, PrefillBatch, PrefillSpan
from .cuda_graphs import DecodeGraphs
from .model.llama import LlamaForCausalLM
from .request import RequestId
from .sampler import Sampler, SampleRow, TokenLogprob
from .scheduler import ScheduledRequest, SchedulerOutput


@dataclass(frozen=True, slots=True)
class KVExport:
    """Hand a request's KV for some of its blocks to `sink`, layer by layer, in the step
    that completes its prompt: `sink(layer, kv)` with kv `[2, len(block_positions),
    block_size, num_kv_heads, head_dim]` (a copy), called as soon as that layer is done so
    sending overlaps the remaining layers."""

    block_positions: list[int]
    sink: Callable[[int, torch.Tensor], None]


@dataclass(frozen=True, slots=True)
class ModelRunnerOutput:
    sampled: dict[RequestId, int]
    logprobs: dict[RequestId, TokenLogprob]


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[torch.Tensor],
        block_size: int,
        device: torch.device,
        sampler: Sampler,
        *,
        attention_backend: AttentionBackend = AttentionBackend.TORCH,
        decode_graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches  # per layer: [2, num_blocks, block_size, num_kv_heads, head_dim]
        self.block_size = block_size
        self.device = device
        self.sampler = sampler
        self.attention_backend = attention_backend
        self.decode_graphs = decode_graphs

    @torch.inference_mode()
    def write_kv(self, block_ids: Sequence[int], layer_start: int, kv: torch.Tensor) -> None:
        """Scatter received KV `[layers, 2, len(block_ids), BS, Hkv, D]` into the cache."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        for offset in range(kv.shape[0]):
            cache = self.kv_caches[layer_start + offset]
            cache.index_copy_(1, index, kv[offset].to(device=self.device, dtype=cache.dtype))

    def _export_hook(
        self, ordered: list[ScheduledRequest], exports: dict[RequestId, KVExport]
    ) -> Callable[[int], None] | None:
        jobs = [
            (
                torch.tensor(
                    [s.block_ids[p] for p in exports[s.request_id].block_positions],
                    dtype=torch.long,
                    device=self.device,
                ),
                exports[s.request_id].sink,
            )
            for s in ordered
            if s.sample and s.request_id in exports
        ]
        if not jobs:
            return None

        def on_layer_done(layer: int) -> None:
            for index, sink in jobs:
                sink(layer, self.kv_caches[layer].index_select(1, index))

        return on_layer_done

    @torch.inference_mode()
    def execute(
        self, out: SchedulerOutput, exports: dict[RequestId, KVExport] | None = None
    ) -> ModelRunnerOutput:
        # NOTE: preempted requests keep their seeded generator: their recompute must go on
        # drawing from the same stream, or a seeded request would repeat itself.
        self.sampler.forget(out.finished_ids)
        if out.is_empty:
            return ModelRunnerOutput({}, {})
        decodes = [s for s in out.scheduled if len(s.token_ids) == 1]
        prefills = [s for s in out.scheduled if len(s.token_ids) > 1]
        ordered = decodes + prefills
        ids, pos, slots = self._flatten(ordered)
        hook = self._export_hook(ordered, exports) if exports else None
        graphs = self.decode_graphs
        if (
            graphs is not None
            and not prefills
            and hook is None
            and graphs.fits(len(decodes), max(len(s.block_ids) for s in decodes))
        ):
            hidden = graphs.run(ids, pos, slots, [s.block_ids for s in decodes])  # [T, hidden]
        else:
            meta = self._metadata(decodes, prefills, slots)
            input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
            positions = torch.tensor(pos, dtype=torch.long, device=self.device)
            hidden = self.model(input_ids, positions, self.kv_caches, meta, hook)  # [T, hidden]

        rows: list[SampleRow] = []
        last: list[int] = []
        offset = 0
        for s in ordered:
            offset += len(s.token_ids)
            if s.sample:
                rows.append(SampleRow(s.request_id, s.params))
                last.append(offset - 1)
        if not rows:
            return ModelRunnerOutput({}, {})
        logits = self.model.compute_logits(hidden[torch.tensor(last, device=self.device)])
        tokens, logprobs = self.sampler.sample(logits, rows)
        return ModelRunnerOutput(
            sampled={r.request_id: t for r, t in zip(rows, tokens, strict=True)},
            logprobs={r.request_id: lp for r, lp in zip(rows, logprobs, strict=True) if lp},
        )

    def _flatten(self, ordered: list[ScheduledRequest]) -> tuple[list[int], list[int], list[int]]:
        """Token ids, positions and cache slots of every scheduled token, in order."""
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        for s in ordered:
            ids.extend(s.token_ids)
            span = range(s.start_position, s.start_position + len(s.token_ids))
            pos.extend(span)
            table = s.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in span)
        return ids, pos, slots

    def _metadata(
        self, decodes: list[ScheduledRequest], prefills: list[ScheduledRequest], slots: list[int]
    ) -> AttentionMetadata:
        dev = self.device
        width = max((len(s.block_ids) for s in decodes), default=1)
        tables = [s.block_ids + [0] * (width - len(s.block_ids)) for s in decodes]
        spans: list[PrefillSpan] = []
        start = len(decodes)
        starts = [start]
        for s in prefills:
            n = len(s.token_ids)
            spans.append(
                PrefillSpan(
                    query_start=start,
                    query_len=n,
                    context_len=s.start_position + n,
                    block_table=torch.tensor(s.block_ids, dtype=torch.long, device=dev),
                )
            )
            start += n
            starts.append(start)
        batch = None
        if prefills and self.attention_backend is AttentionBackend.TRITON:
            batch = PrefillBatch.build(
                starts, [sp.context_len for sp in spans], [s.block_ids for s in prefills], dev
            )
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decode_tokens=len(decodes),
            decode_block_tables=torch.tensor(tables, dtype=torch.long, device=dev).view(
                len(decodes), width
            ),
            decode_context_lens=torch.tensor(
                [s.start_position + 1 for s in decodes], dtype=torch.long, device=dev
            ),
            prefills=spans,
            prefill_batch=batch,
        )
