"""Kernels and the engine on a GPU, against the device's own ceilings (issue 4).

Llama-3-8B shapes: 32 query heads, 8 KV heads, head dim 128, bfloat16, KV block 16. First
the ceilings are measured in the same run: a large device-to-device copy (bytes read +
written per second) and a large bf16 matmul (FLOP/s). Then each row is a ratio against one
of them, or against torch's SDPA on the same data:

- decode attention, batch 64 x context 4096: (KV + query + output bytes) / time / copy;
- prefill attention, 4 x 2048 causal tokens over paged KV: SDPA time / Triton time, SDPA on
  the same data laid out contiguously (K/V expanded to every query head);
- KV pack and unpack of a 4096-token request, all 32 layers: 2 x packed bytes / time / copy;
- a dummy Llama-3-8B engine step (CUDA graphs, Triton attention), decode at batch 1 and
  64 over 1024-token contexts: (weight + KV bytes) / step time / copy; and a prefill step
  of 4 x 2048 tokens as MFU: (2 x params x tokens + attention FLOPs) / time / matmul peak.

Times are CUDA-event medians after warm-ups (engine steps: wall-clock medians of whole
`step()` calls, sampling and scheduling included).

    python benchmarks/bench_kernels_gpu.py [--json results.json] [--repeats 20]

Needs CUDA: exits with status 2 and a message otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
DTYPE = torch.bfloat16


@dataclass
class Row:
    name: str
    measured: str  # the raw figure, for the table
    ratio: float | None  # None: unavailable
    target: str


def cuda_time(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of `fn` on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def ceilings(repeats: int) -> tuple[float, float]:
    """(copy bytes/s counting read + write, bf16 matmul FLOP/s)."""
    buffers = [torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda") for _ in range(2)]
    copy_s = cuda_time(lambda: buffers[1].copy_(buffers[0]), repeats)
    buffers.clear()
    n = 8192
    a = torch.randn(n, n, dtype=DTYPE, device="cuda")
    b = torch.randn(n, n, dtype=DTYPE, device="cuda")
    mm_s = cuda_time(lambda: a @ b, repeats)
    return 2 * 2 * 1024**3 / copy_s, 2 * n**3 / mm_s


def paged_copy(
    kv: torch.Tensor, gen: torch.Generator, spare: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay `kv` [2, N, L, Hkv, D] out in a paged cache on shuffled blocks; (cache, tables)."""
    _, num_seqs, length, _, _ = kv.shape
    per_seq = -(-length // BLOCK)
    num_blocks = num_seqs * per_seq + spare
    order = torch.randperm(num_blocks, generator=gen)[: num_seqs * per_seq].to("cuda")
    tables = order.view(num_seqs, per_seq)
    cache = torch.zeros(2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    padded = F.pad(kv, (0, 0, 0, 0, 0, per_seq * BLOCK - length))
    cache[:, tables.flatten()] = padded.reshape(2, num_seqs * per_seq, BLOCK, KV_HEADS, HEAD_DIM)
    return cache, tables


def decode_row(copy_bw: float, repeats: int) -> Row:
    from kvferry.kernels.paged_decode_attention import paged_decode_attention

    batch, context = 64, 4096
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(2, batch, context, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    cache, tables = paged_copy(kv, gen)
    del kv
    query = torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    lens = torch.full((batch,), context, dtype=torch.long, device="cuda")
    out = torch.empty_like(query)
    seconds = cuda_time(
        lambda: paged_decode_attention(query, cache, tables, lens, HEAD_DIM**-0.5, out=out),
        repeats,
    )
    moved = 2 * batch * context * KV_HEADS * HEAD_DIM * 2 + 2 * query.numel() * 2
    bw = moved / seconds
    return Row(
        "decode attention, 64 x 4096: bytes/s / copy",
        f"{seconds * 1e6:.0f} us, {bw / 1e12:.2f} TB/s",
        bw / copy_bw,
        ">= 0.75",
    )


def prefill_row(repeats: int) -> Row:
    from kvferry.kernels.paged_prefill_attention import paged_prefill_attention

    num_seqs, length = 4, 2048
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(num_seqs, length, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    kv = torch.randn(2, num_seqs, length, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    cache, tables = paged_copy(kv, gen)
    starts = torch.arange(0, (num_seqs + 1) * length, length, dtype=torch.int32, device="cuda")
    lens = torch.full((num_seqs,), length, dtype=torch.int32, device="cuda")
    flat_q = q.reshape(num_seqs * length, HEADS, HEAD_DIM)
    out = torch.empty_like(flat_q)
    scale = HEAD_DIM**-0.5
    triton_s = cuda_time(
        lambda: paged_prefill_attention(
            flat_q, cache, tables, starts, lens, length, scale, out=out
        ),
        repeats,
    )
    group = HEADS // KV_HEADS
    sq = q.transpose(1, 2).contiguous()  # [N, H, L, D]
    sk, sv = (kv[i].repeat_interleave(group, dim=2).transpose(1, 2).contiguous() for i in (0, 1))
    sdpa_s = cuda_time(
        lambda: F.scaled_dot_product_attention(sq, sk, sv, is_causal=True, scale=scale), repeats
    )
    flops = 4 * num_seqs * length * length * HEADS * HEAD_DIM / 2  # causal: half the matrix
    return Row(
        "prefill attention, 4 x 2048 causal: SDPA time / Triton time",
        f"triton {triton_s * 1e3:.2f} ms ({flops / triton_s / 1e12:.0f} TFLOP/s),"
        f" sdpa {sdpa_s * 1e3:.2f} ms ({flops / sdpa_s / 1e12:.0f} TFLOP/s)",
        sdpa_s / triton_s,
        ">= 0.8",
    )


def kv_pack_rows(copy_bw: float, repeats: int) -> list[Row]:
    names = ("KV pack, 4096 tokens x 32 layers: bytes/s / copy", "KV unpack, same: bytes/s / copy")
    try:
        from kvferry.kernels.kv_pack import pack_kv_blocks, unpack_kv_blocks
    except ImportError as exc:
        return [Row(n, f"unavailable ({exc})", None, ">= 0.8") for n in names]
    layers, num_blocks, used = 32, 1024, 4096 // BLOCK
    caches = [
        torch.randn(2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
        for _ in range(layers)
    ]
    gen = torch.Generator().manual_seed(2)
    ids = torch.randperm(num_blocks, generator=gen)[:used].to("cuda")
    packed = pack_kv_blocks(caches, ids)
    moved = 2 * packed.numel() * packed.element_size()
    rows = []
    for name, fn in (
        (names[0], lambda: pack_kv_blocks(caches, ids, out=packed)),
        (names[1], lambda: unpack_kv_blocks(packed, caches, ids)),
    ):
        seconds = cuda_time(fn, repeats)
        bw = moved / seconds
        rows.append(
            Row(name, f"{seconds * 1e3:.2f} ms, {bw / 1e12:.2f} TB/s", bw / copy_bw, ">= 0.8")
        )
    return rows


def engine_rows(copy_bw: float, matmul_flops: float, repeats: int) -> list[Row]:
    from kvferry import SamplingParams
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.engine.engine import LLMEngine

    context, batch = 1024, 64
    engine = LLMEngine(
        EngineConfig(
            model="llama-3-8b",
            load_format="dummy",
            dtype="bfloat16",
            device="cuda",
            max_model_len=8192,
            max_num_seqs=batch,
            max_num_batched_tokens=8192,
            num_kv_blocks=batch * (context + 2 * repeats + 64) // BLOCK + 64,
            enable_prefix_caching=False,
        )
    )
    cfg = engine.model_config
    params = sum(p.numel() for p in engine.model.parameters())
    weight_bytes = (params - engine.model.embed_tokens.weight.numel()) * 2  # rows read: ~0
    kv_token_bytes = cfg.num_hidden_layers * 2 * KV_HEADS * HEAD_DIM * 2
    gen = torch.Generator().manual_seed(3)
    added: list[str] = []

    def add(n: int, prompt_len: int, max_tokens: int) -> None:
        for _ in range(n):
            prompt = torch.randint(0, 128000, (prompt_len,), generator=gen).tolist()
            params_ = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            added.append(f"r{len(added)}")
            engine.add_request(added[-1], prompt, params_)

    def step_time() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        return time.perf_counter() - start

    def decoding() -> bool:
        running = engine.scheduler.running
        return not engine.scheduler.waiting and all(
            r.num_computed_tokens >= r.num_prompt_tokens for r in running
        )

    rows = []
    for n in (1, batch):
        add(n, context, max_tokens=2 * repeats + 16)
        while not decoding():
            engine.step()
        for _ in range(4):  # the first decode step captures this bucket's graph
            engine.step()
        times = [step_time() for _ in range(repeats)]
        seconds = statistics.median(times)
        kv_bytes = n * (context + 4 + repeats // 2) * kv_token_bytes  # median step's context
        bw = (weight_bytes + kv_bytes) / seconds
        rows.append(
            Row(
                f"Llama-3-8B decode step, batch {n}: (weights + KV) bytes/s / copy",
                f"{seconds * 1e3:.2f} ms/step, {n / seconds:.0f} tok/s",
                bw / copy_bw,
                ">= 0.7" if n == 1 else "(batch 1 target only)",
            )
        )
        for rid in added:
            engine.abort(rid)

    prompt_len, num = 2048, 4
    times = []
    for _ in range(max(3, repeats // 4)):
        add(num, prompt_len, max_tokens=1)
        times.append(step_time())  # the whole 8192-token prefill is one step
        while engine.has_unfinished_requests():
            engine.step()
    seconds = statistics.median(times[1:])
    tokens = num * prompt_len
    attn = 2 * num * prompt_len**2 * HEADS * HEAD_DIM * cfg.num_hidden_layers  # causal
    flops = 2 * (params - engine.model.embed_tokens.weight.numel()) * tokens + attn
    rows.append(
        Row(
            "Llama-3-8B prefill step, 4 x 2048 tokens: MFU",
            f"{seconds * 1e3:.0f} ms, {tokens / seconds:.0f} tok/s",
            flops / seconds / matmul_flops,
            "(report)",
        )
    )
    return rows


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-engine", action="store_true", help="kernels only (no 8B model)")
    parser.add_argument("--commit", default=None, help="commit to report (default: git HEAD)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels_gpu.py needs a CUDA device; none is visible.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    copy_bw, matmul_flops = ceilings(args.repeats)
    rows = [decode_row(copy_bw, args.repeats), prefill_row(args.repeats)]
    rows += kv_pack_rows(copy_bw, args.repeats)
    if not args.skip_engine:
        torch.cuda.empty_cache()
        with torch.inference_mode():
            rows += engine_rows(copy_bw, matmul_flops, args.repeats)
    header = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "commit": args.commit or commit(),
        "torch": torch.__version__,
        "copy_TB_s": copy_bw / 1e12,
        "matmul_TFLOP_s": matmul_flops / 1e12,
    }
    print(
        f"{header['device']}, {header['date']}, commit {header['commit']}, torch"
        f" {header['torch']}: copy {copy_bw / 1e12:.2f} TB/s (read + write), bf16 matmul"
        f" {matmul_flops / 1e12:.0f} TFLOP/s\n"
    )
    print("| measurement | measured | target | ratio |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        print(f"| {r.name} | {r.measured} | {r.target} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
