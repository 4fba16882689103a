"""What FP8 (e4m3) KV transfer costs in accuracy, against exact transfer in the same run.

A decode worker with `--kv-compression fp8` gets the prompt's KV quantized with one scale
per (layer, K/V, block, KV head) and dequantized into its cache; the tokens it generates
after that have exact KV. This script reproduces that on CPU with the engine's own model
and attention code:

(a) per-element error of FP8 pack -> unpack (`kernels/kv_pack_ref.py`, which the Triton
    kernels match bit for bit) on random KV (Gaussian, and heavy-tailed with outlier
    channels as real keys have) and on the model's own prompt KV;
(b) end to end, per prompt: prefill exactly, then decode greedily once from the exact cache
    and once from a copy whose prompt blocks went through FP8. It reports whether the
    greedy tokens are identical (and where they first differ), and, teacher-forced on the
    exact continuation, the largest logit difference and the top-1 agreement.

    .venv/bin/python benchmarks/bench_kv_fp8_accuracy.py                  # the tiny preset
    .venv/bin/python benchmarks/bench_kv_fp8_accuracy.py --model DIR      # a HF model folder

The baseline (exact KV) runs in the same process on the same prompts; the ratios come last.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from _report import cpu_name

from kvferry.kernels import kv_pack_ref
from kvferry.services.engine.attention import AttentionMetadata, PrefillSpan
from kvferry.services.engine.model import LlamaForCausalLM, load_model, resolve_model
from kvferry.services.engine.resolve import resolve_tokenizer

BLOCK_SIZE = 16
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TEXT_PROMPTS = [
    "The capital of France is",
    "Photosynthesis is the process by which green plants and some other organisms use"
    " sunlight to synthesize foods from carbon dioxide and water. In plants it generally"
    " involves",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Once upon a time, in a small village at the edge of a great forest, there lived an old"
    " woodcutter and his daughter. Every morning",
    "The three laws of thermodynamics can be summarised as follows. First,",
    "Q: What is the boiling point of water at sea level in degrees Fahrenheit?\nA:",
    "In 1969, the Apollo 11 mission",
    "A hash table is a data structure that",
]


@dataclass(frozen=True, slots=True)
class ErrorStats:
    rel_rms: float
    """||x_fp8 - x|| / ||x||"""
    median_rel: float
    p99_rel: float
    """Of |x_fp8 - x| / |x| over elements at least 1% of their group's absolute max."""
    max_abs_over_amax: float
    """The largest |x_fp8 - x|, relative to its (layer, K/V, block, head) group's amax."""


def fp8_round_trip(kv: torch.Tensor) -> torch.Tensor:
    """`[L, 2, n, BS, Hkv, D]` through FP8 and back, in its own dtype (the wire path)."""
    return kv_pack_ref.dequantize_fp8(*kv_pack_ref.quantize_fp8(kv), dtype=kv.dtype)


def error_stats(kv: torch.Tensor) -> ErrorStats:
    x = kv.float()
    err = (fp8_round_trip(kv).float() - x).abs()
    amax = x.abs().amax(dim=(3, 5), keepdim=True).clamp_min(1e-30)  # per group
    big = x.abs() >= amax / 100
    rel = (err[big] / x.abs()[big]).flatten()
    if rel.numel() > 2_000_000:  # quantiles of a sample: torch.quantile's input limit
        rel = rel[torch.randperm(rel.numel(), generator=torch.Generator().manual_seed(0))][
            :2_000_000
        ]
    return ErrorStats(
        rel_rms=float(err.norm() / x.norm()),
        median_rel=float(rel.median()),
        p99_rel=float(torch.quantile(rel, 0.99)),
        max_abs_over_amax=float((err / amax).max()),
    )


def random_kv(kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Llama-3-8B-like blocks (8 KV heads, head dim 128): 4 layers x 64 blocks."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 64, BLOCK_SIZE, 8, 128, generator=gen)
    if kind == "heavy-tailed":
        # a few channels 20x larger per head (the outlier channels of real keys), and a
        # Student-t body
        x = torch.distributions.StudentT(3.0).sample(x.shape)
        outliers = torch.zeros(128)
        outliers[torch.randperm(128, generator=gen)[:4]] = 19.0
        x = x * (1 + outliers)
    return x.to(dtype)


class PagedRun:
    """One sequence in a paged cache (blocks 0, 1, ...), run through the engine's model."""

    def __init__(self, model: LlamaForCausalLM, max_len: int, dtype: torch.dtype) -> None:
        c = model.config
        self.model = model
        self.num_blocks = -(-max_len // BLOCK_SIZE)
        shape = (2, self.num_blocks, BLOCK_SIZE, c.num_key_value_heads, c.head_dim)
        self.caches = [torch.zeros(shape, dtype=dtype) for _ in range(c.num_hidden_layers)]
        self.table = torch.arange(self.num_blocks)

    def copy(self) -> PagedRun:
        other = object.__new__(PagedRun)
        other.model, other.num_blocks, other.table = self.model, self.num_blocks, self.table
        other.caches = [c.clone() for c in self.caches]
        return other

    @torch.inference_mode()
    def forward(self, tokens: list[int], start: int) -> torch.Tensor:
        """float32 logits `[len(tokens), vocab]` for tokens at positions start.., whose KV
        this writes; earlier positions must be cached."""
        positions = torch.arange(start, start + len(tokens))
        meta = AttentionMetadata(
            slot_mapping=positions.clone(),  # block b holds positions b*BS.. (blocks 0, 1..)
            num_decode_tokens=0,
            decode_block_tables=torch.zeros(0, 1, dtype=torch.long),
            decode_context_lens=torch.zeros(0, dtype=torch.long),
            prefills=[PrefillSpan(0, len(tokens), start + len(tokens), self.table)],
        )
        hidden = self.model(torch.tensor(tokens), positions, self.caches, meta)
        return self.model.compute_logits(hidden)

    def prompt_kv(self, length: int) -> torch.Tensor:
        """`[L, 2, n, BS, Hkv, D]`: the blocks holding the first `length` positions."""
        ids = torch.arange(-(-length // BLOCK_SIZE))
        return kv_pack_ref.pack_kv_blocks(self.caches, ids)

    def through_fp8(self, length: int) -> None:
        """Replace the prompt's blocks by what an FP8 transfer delivers."""
        ids = torch.arange(-(-length // BLOCK_SIZE))
        q, scales = kv_pack_ref.pack_kv_blocks_fp8(self.caches, ids)
        kv_pack_ref.unpack_kv_blocks_fp8(q, scales, self.caches, ids)

    def greedy(self, first: int, start: int, steps: int) -> list[int]:
        tokens = [first]
        for i in range(steps - 1):
            tokens.append(int(self.forward([tokens[-1]], start + i)[-1].argmax()))
        return tokens


@dataclass(frozen=True, slots=True)
class PromptResult:
    prompt_len: int
    identical: bool
    first_divergence: int | None
    max_logit_diff: float
    mean_logit_diff: float
    top1_agreement: float
    logit_range: float
    """max - min of the exact logits, for scale"""


def compare(
    model: LlamaForCausalLM, prompt: list[int], steps: int, dtype: torch.dtype
) -> tuple[PromptResult, torch.Tensor]:
    exact = PagedRun(model, len(prompt) + steps, dtype)
    first = int(exact.forward(prompt, 0)[-1].argmax())  # the prefill worker's token
    kv = exact.prompt_kv(len(prompt))
    fp8 = exact.copy()
    fp8.through_fp8(len(prompt))
    teacher_exact, teacher_fp8 = exact.copy(), fp8.copy()
    tokens_exact = exact.greedy(first, len(prompt), steps)
    tokens_fp8 = fp8.greedy(first, len(prompt), steps)
    # teacher-forced on the exact continuation: logits for tokens 1..steps-1
    forced = tokens_exact[:-1]
    logits_exact = teacher_exact.forward(forced, len(prompt))
    logits_fp8 = teacher_fp8.forward(forced, len(prompt))
    diff = (logits_fp8 - logits_exact).abs()
    divergence = next(
        (i for i, (a, b) in enumerate(zip(tokens_exact, tokens_fp8, strict=True)) if a != b),
        None,
    )
    result = PromptResult(
        prompt_len=len(prompt),
        identical=divergence is None,
        first_divergence=divergence,
        max_logit_diff=float(diff.max()),
        mean_logit_diff=float(diff.mean()),
        top1_agreement=float((logits_fp8.argmax(-1) == logits_exact.argmax(-1)).float().mean()),
        logit_range=float(logits_exact.max() - logits_exact.min()),
    )
    return result, kv


def prompts_for(model_name: str, folder: Path | None, vocab: int, count: int) -> list[list[int]]:
    if folder is not None:
        tokenizer = resolve_tokenizer(None, folder, resolve_model(model_name)[0])
        return [tokenizer.encode(text) for text in TEXT_PROMPTS[:count]]
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 17, 40, 64, 90, 120, 33, 71][:count]  # block multiples and not
    return [torch.randint(3, min(vocab, 256), (n,), generator=gen).tolist() for n in lengths]


def describe() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    today = datetime.date.today().isoformat()
    return f"{cpu_name()} ({platform.machine()}), torch {torch.__version__}, {today}, {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a preset or a Hugging Face folder")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32, help="greedy tokens per prompt")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)

    config, folder = resolve_model(args.model)
    model = load_model(
        config,
        folder,
        load_format="dummy" if folder is None else "auto",
        dtype=dtype,
        device=torch.device("cpu"),
    )
    print(f"# {describe()}")
    print(
        f"# model {args.model}: {config.num_hidden_layers} layers, {config.num_key_value_heads}"
        f" KV heads x {config.head_dim}; KV cache {args.dtype}; block size {BLOCK_SIZE}"
    )

    results: list[PromptResult] = []
    model_kv: list[torch.Tensor] = []
    for prompt in prompts_for(args.model, folder, config.vocab_size, args.prompts):
        result, kv = compare(model, prompt, args.steps, dtype)
        results.append(result)
        model_kv.append(kv)

    print(f"\n(a) FP8 pack -> unpack, per-element error ({args.dtype} KV)")
    print(f"{'KV':<28} {'rel RMS':>8} {'median rel':>11} {'p99 rel':>8} {'max err/amax':>13}")
    sources = {
        "random Gaussian": random_kv("gaussian", dtype),
        "random heavy-tailed": random_kv("heavy-tailed", dtype),
    }
    all_kv = torch.cat(model_kv, dim=2)  # [L, 2, blocks of every prompt, BS, Hkv, D]
    sources[f"{args.model} prompts, K"] = all_kv[:, :1]
    sources[f"{args.model} prompts, V"] = all_kv[:, 1:]
    for name, kv in sources.items():
        s = error_stats(kv)
        print(
            f"{name[-28:]:<28} {s.rel_rms:>8.4f} {s.median_rel:>11.4f} {s.p99_rel:>8.4f}"
            f" {s.max_abs_over_amax:>13.4f}"
        )

    print(f"\n(b) decode from FP8-transferred prompt KV vs exact, {args.steps} greedy tokens")
    print(
        f"{'prompt':>6} {'tokens':>6} {'greedy same':>11} {'1st diff':>8} {'max |dlogit|':>12}"
        f" {'mean |dlogit|':>13} {'top-1 agree':>11} {'logit range':>11}"
    )
    for i, r in enumerate(results):
        diverged = "-" if r.first_divergence is None else str(r.first_divergence)
        print(
            f"{i:>6} {r.prompt_len:>6} {r.identical!s:>11} {diverged:>8}"
            f" {r.max_logit_diff:>12.4f} {r.mean_logit_diff:>13.5f} {r.top1_agreement:>11.3f}"
            f" {r.logit_range:>11.2f}"
        )
    identical = sum(r.identical for r in results)
    agree = statistics.fmean(r.top1_agreement for r in results)
    max_diff = max(r.max_logit_diff for r in results)
    # the bytes on the wire: one fp8 byte per element plus a float32 scale per group
    exact_bytes = all_kv.numel() * all_kv.element_size()
    groups = all_kv.numel() // (BLOCK_SIZE * config.head_dim)
    fp8_bytes = all_kv.numel() + 4 * groups
    print(
        f"\nFP8 vs exact: wire bytes {fp8_bytes / exact_bytes:.3f}x; greedy tokens identical"
        f" on {identical}/{len(results)} prompts; teacher-forced top-1 agreement"
        f" {agree:.3f}; max |logit diff| {max_diff:.3f}"
    )


if __name__ == "__main__":
    main()
