"""Token sampling for one step's batch of last-position logits.

Greedy rows take the argmax of the raw logits. Sampled rows apply temperature, top-k, top-p
and min-p, then draw with the exponential-race trick (argmax of probs / Exp(1) noise), the
noise coming from a per-request generator when the request has a seed, so a seeded
request draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from kvferry.sampling_params import SamplingParams

from .request import RequestId


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability (under the raw model distribution) of a sampled token, plus the top-N."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class SampleRow:
    request_id: RequestId
    params: SamplingParams


class Sampler:
    def __init__(self, device: torch.device, seed: int | None = None) -> None:
        self.device = device
        self._seeded: dict[RequestId, torch.Generator] = {}
        self._shared = torch.Generator(device=device)
        if seed is None:
            self._shared.seed()
        else:
            self._shared.manual_seed(seed)

    def forget(self, request_ids: Iterable[RequestId]) -> None:
        """Drop per-request generators of requests that ended."""
        for rid in request_ids:
            self._seeded.pop(rid, None)

    def advance(self, row: SampleRow, vocab_size: int, draws: int) -> None:
        """Consume `draws` samples' worth of a seeded request's stream (drawn elsewhere, e.g.
        the first token on a prefill worker), so its next token matches a colocated run."""
        if row.params.greedy or row.params.seed is None:
            return
        gen = self._generator(row)
        for _ in range(draws):
            torch.empty(vocab_size, device=self.device).exponential_(generator=gen)

    def _generator(self, row: SampleRow) -> torch.Generator:
        if row.params.seed is None:
            return self._shared
        gen = self._seeded.get(row.request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(row.params.seed)
            self._seeded[row.request_id] = gen
        return gen

    def sample(
        self, logits: torch.Tensor, rows: Sequence[SampleRow]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        # logits: [N, vocab] float32
        tokens = logits.argmax(dim=-1)  # [N]
        sampled_idx = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled_idx:
            idx = torch.tensor(sampled_idx, device=logits.device)
            picked = self._draw(logits[idx], [rows[i] for i in sampled_idx])
            tokens[idx] = picked
        token_list: list[int] = tokens.tolist()
        return token_list, self._logprobs(logits, rows, token_list)

    def _draw(self, logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        # logits: [n, vocab]
        dev = logits.device
        temp = torch.tensor([r.params.temperature for r in rows], device=dev)
        logits = logits / temp.unsqueeze(1)
        top_k = [r.params.top_k for r in rows]
        if any(top_k):
            vocab = logits.shape[1]
            k = torch.tensor([min(x, vocab) if x else vocab for x in top_k], device=dev)
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1)  # [n, vocab]
        top_p = [r.params.top_p for r in rows]
        if any(p < 1.0 for p in top_p):
            p = torch.tensor(top_p, device=dev).unsqueeze(1)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # NOTE: a token is dropped when the mass *before* it already reaches top_p, so the
            # most likely token always survives.
            drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= p
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        min_p = [r.params.min_p for r in rows]
        if any(min_p):
            floor = torch.tensor(min_p, device=dev).unsqueeze(1) * probs.max(dim=-1).values[:, None]
            probs = probs.masked_fill(probs < floor, 0.0)
        noise = torch.empty_like(probs)
        for i, row in enumerate(rows):
            noise[i].exponential_(generator=self._generator(row))
        return (probs / noise).argmax(dim=-1)

    @staticmethod
    def _logprobs(
        logits: torch.Tensor, rows: Sequence[SampleRow], tokens: list[int]
    ) -> list[TokenLogprob | None]:
        wanted = [r.params.logprobs for r in rows]
        out: list[TokenLogprob | None] = [None] * len(rows)
        if all(n is None for n in wanted):
            return out
        logp = logits.log_softmax(dim=-1)  # [N, vocab]
        for i, n in enumerate(wanted):
            if n is None:
                continue
            top = logp[i].topk(n) if n else None
            pairs = (
                tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else ()
            )
            out[i] = TokenLogprob(tokens[i], float(logp[i, tokens[i]]), pairs)
        return out
