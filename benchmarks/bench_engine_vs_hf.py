"""CPU engine throughput: kvferry continuous batching vs transformers static batches.

Both sides run the same weights: a random Llama of the `bench-cpu` preset's shape
(hidden 512, 8 heads, 4 KV heads, 4 layers, float32), saved by transformers and loaded
by kvferry from that folder. The workload is 64 requests whose prompt/output lengths
follow the Azure LLM 2023 conversation trace, scaled down (prompt = ctx/4 clipped to
[1, 512], output = gen/2 clipped to [1, 128]). transformers runs them in padded static
batches of `--batch` (left padding, every sequence generates the batch's longest
output); kvferry runs them all with `max_num_seqs=--batch`. Both count the same
useful output tokens.

    .venv/bin/python benchmarks/bench_engine_vs_hf.py [--requests 64] [--batch 16]

Each side runs `--repeats` times, alternating; medians are reported. The ratio (kvferry /
transformers output tokens/s) is printed last.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from _report import cpu_name

TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
)


def load_workload(path: Path, n: int, seed: int) -> list[tuple[int, int]]:
    with path.open() as f:
        rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]
    rng = random.Random(seed)
    picked = rng.sample(rows, n)
    return [(min(max(c // 4, 1), 512), min(max(g // 2, 1), 128)) for c, g in picked]


def build_checkpoint(folder: Path) -> None:
    """Save random weights of kvferry's `bench-cpu` preset shape with transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvferry.services.engine.model.presets import get_preset

    shape = get_preset("bench-cpu")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=1024,
        rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        bos_token_id=shape.bos_token_id,
        eos_token_id=list(shape.eos_token_ids),
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def run_transformers(folder: Path, prompts: list[list[int]], outs: list[int], batch: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():  # warm-up
        model.generate(
            torch.tensor([prompts[0]]), max_new_tokens=2, do_sample=False, pad_token_id=0
        )
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk, want = prompts[i : i + batch], outs[i : i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max(want),
                min_new_tokens=max(want),
                do_sample=False,
                pad_token_id=0,
            )
    return time.perf_counter() - start


def run_kvferry(folder: Path, prompts: list[list[int]], outs: list[int], batch: int) -> float:
    from kvferry import LLM, SamplingParams

    llm = LLM(
        model=str(folder), tokenizer="byte", dtype="float32", max_num_seqs=batch, max_model_len=1024
    )
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in outs]
    llm.generate(prompts[:2], params[:2])  # warm-up
    llm.engine.kv.pool.reset_prefix_cache()
    start = time.perf_counter()
    results = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    got = [len(r.token_ids) for r in results]
    if got != outs:
        raise RuntimeError("kvferry produced a different number of tokens than asked")
    return elapsed


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--trace", type=Path, default=TRACE)
    args = parser.parse_args()

    workload = load_workload(args.trace, args.requests, args.seed)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(258) for _ in range(p)] for p, _ in workload]
    outs = [o for _, o in workload]
    useful = sum(outs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_checkpoint(folder)
        # Alternate the two sides so drift on a shared machine hits both alike.
        runs_hf, runs_kv = [], []
        for _ in range(args.repeats):
            runs_hf.append(run_transformers(folder, prompts, outs, args.batch))
            runs_kv.append(run_kvferry(folder, prompts, outs, args.batch))
        t_hf, t_kv = statistics.median(runs_hf), statistics.median(runs_kv)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"device: {cpu_name()}, {torch.get_num_threads()} torch threads")
    print(f"torch {torch.__version__}, commit {commit}, {time.strftime('%Y-%m-%d')}")
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(
        f"workload: {args.requests} requests, prompt mean {mean_prompt:.0f} tokens,"
        f" output mean {useful / len(outs):.0f} tokens, batch {args.batch}"
    )
    print(f"medians of {args.repeats} alternating rounds")
    print(f"rounds (s): transformers {fmt(runs_hf)}; kvferry {fmt(runs_kv)}")
    print(f"{'engine':<28}{'seconds':>10}{'output tok/s':>15}")
    print(f"{'transformers (static)':<28}{t_hf:>10.2f}{useful / t_hf:>15.1f}")
    print(f"{'kvferry (continuous)':<28}{t_kv:>10.2f}{useful / t_kv:>15.1f}")
    print(f"ratio kvferry/transformers: {t_hf / t_kv:.2f}x")


if __name__ == "__main__":
    main()
