"""End-to-end trace replay: disaggregated (router + 1 prefill + 1 decode) vs colocated
(router + 2 mixed workers), the built-in `tiny` model on CPU, the same requests on both.

    .venv/bin/python benchmarks/bench_e2e_trace.py [--trace mooncake|mooncake-synthetic|azure]
        [--requests 64] [--time-scale F] [--json out.json]

The first `--requests` rows of a real trace (`../shared/data/traces/`) are scaled to the
tiny model (see `_trace.py`: lengths divided and clipped, Mooncake hash ids turned into
shared token prefixes, arrivals spread and compressed) and sent open-loop at their arrival
times through `kvferry.AsyncClient`, greedy with ignore_eos, after one warm-up
request per worker. Measured client-side per request: TTFT (sent -> first token), TPOT
((last - first token) / (n - 1)), end-to-end; per configuration: their p50/p90, output
tokens/s and requests/s over the run, errors.
`--repeats` rounds run both configurations (a fresh `LocalCluster` each time, order
alternating); tables show medians of rounds and error totals. The greedy token ids must
be identical in every run. The ratio line (disaggregated / colocated) is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _report import cpu_name
from _trace import (
    BOS_ID,
    ReplayRequest,
    RequestResult,
    Scaling,
    Summary,
    TraceRow,
    build_requests,
    combine,
    content_tokens,
    count_mismatches,
    parse_azure,
    parse_mooncake,
    reusable_prefix_tokens,
    summarize,
)

import kvferry
from kvferry.errors import RequestError
from kvferry.local_cluster import LocalCluster
from kvferry.services.router.config import RouterConfig

TRACE_DIR = Path(__file__).resolve().parents[2] / "shared/data/traces"
KV_BLOCK_SIZE = 16  # the workers' --block-size default; used only for the ideal-reuse figure


@dataclass(frozen=True, slots=True)
class TraceSpec:
    path: str  # under --trace-dir
    parse: Callable[[Iterable[str], int, int], list[TraceRow]]
    scaling: Scaling  # defaults for this trace; each field can be overridden on the CLI


TRACES = {
    # Kimi conversations: prompts p50 6.9k tokens (/32 -> 216), outputs p50 350 (/8 -> 44);
    # timestamps quantised to ~3 s, so requests of a bucket are spread over it.
    "mooncake": TraceSpec(
        "mooncake_fast25/conversation_trace.jsonl",
        parse_mooncake,
        Scaling(input_scale=32, output_scale=8, time_scale=4.0, spread_s=3.0),
    ),
    # ShareGPT/L-Eval/LooGLE mix, Poisson arrivals at 1 ms: prompts p50 11.6k, outputs p50 69.
    "mooncake-synthetic": TraceSpec(
        "mooncake_fast25/synthetic_trace.jsonl",
        parse_mooncake,
        Scaling(input_scale=32, output_scale=4, time_scale=4.0, spread_s=0.0),
    ),
    # Azure LLM 2023 conversation (Splitwise): prompts p50 1,020, outputs p50 129.
    "azure": TraceSpec(
        "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
        parse_azure,
        Scaling(input_scale=4, output_scale=4, time_scale=4.0, spread_s=0.0),
    ),
}


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    prefill: int
    decode: int
    mixed: int

    def describe(self) -> str:
        if self.mixed:
            return f"router + {self.mixed} mixed"
        return f"router + {self.prefill} prefill + {self.decode} decode"


SHAPES = (Shape("disaggregated", 1, 1, 0), Shape("colocated", 0, 0, 2))


async def _send(
    client: kvferry.AsyncClient, request: ReplayRequest, result: RequestResult, start: float
) -> None:
    await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
    result.sent_s = time.perf_counter() - start
    tokens: list[int] = []
    stream = client.generate(
        list(request.prompt),
        max_tokens=request.max_tokens,
        temperature=0.0,
        ignore_eos=True,
        request_id=f"trace-{request.index}",
    )
    try:
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                now = time.perf_counter() - start
                if chunk.token_ids:
                    if result.first_token_s is None:
                        result.first_token_s = now
                    result.last_token_s = now
                    tokens += chunk.token_ids
                if chunk.timing is not None and chunk.timing.kv_transfer_s:
                    result.kv_transfer_s = chunk.timing.kv_transfer_s
                if chunk.usage is not None:
                    result.cached_tokens = chunk.usage.cached_tokens
                if chunk.finish_reason is not None:
                    result.token_ids = tokens
    except RequestError as err:
        result.error = str(err)
    if result.token_ids is None and not result.error:
        result.error = "the stream ended without a finish_reason"


async def replay(
    address: str,
    requests: Sequence[ReplayRequest],
    request_timeout_s: float,
    overall_timeout_s: float,
) -> list[RequestResult]:
    """Send every request at its arrival time; the results, in request order. Requests
    still running after `overall_timeout_s` are cancelled and reported as errors."""
    results = [RequestResult(r.index) for r in requests]
    # NOTE: no retries: an UNAVAILABLE must show up as an error, not as extra latency.
    async with kvferry.AsyncClient(address, timeout=request_timeout_s, max_retries=0) as client:
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(_send(client, r, res, start))
            for r, res in zip(requests, results, strict=True)
        ]
        _, pending = await asyncio.wait(tasks, timeout=overall_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:  # anything but a RequestError is a bug here: surface it
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
    for task, res in zip(tasks, results, strict=True):
        if task.cancelled() and not res.error:
            res.error = f"unfinished after the overall timeout ({overall_timeout_s:.0f}s)"
    return results


async def warm_up(address: str, workers: int, timeout_s: float) -> None:
    """One request per worker, at once (placement spreads them), long enough to take the
    prefill hop; their content shares no block with the trace's prompts."""
    prompt_len = RouterConfig().short_prompt_tokens + 36
    async with kvferry.AsyncClient(address, timeout=timeout_s, max_retries=0) as client:
        await asyncio.gather(
            *(
                client.complete(
                    [BOS_ID, *content_tokens(f"warm-up:{i}", prompt_len - 1)],
                    max_tokens=4,
                    temperature=0.0,
                    ignore_eos=True,
                )
                for i in range(workers)
            )
        )


def run_shape(
    shape: Shape, requests: Sequence[ReplayRequest], args: argparse.Namespace, log_dir: Path
) -> list[RequestResult]:
    worker_args = ["--kv-cache-bytes", str(args.kv_cache_mib * 1024**2)]
    print(f"\nstarting {shape.name}: {shape.describe()} ...", flush=True)
    t0 = time.perf_counter()
    with LocalCluster(
        model="tiny",
        prefill=shape.prefill,
        decode=shape.decode,
        mixed=shape.mixed,
        port=0,
        worker_args=worker_args,
        log_dir=log_dir,
    ) as cluster:
        print(f"  up at {cluster.address} in {time.perf_counter() - t0:.1f}s", flush=True)
        asyncio.run(warm_up(cluster.address, cluster.num_workers, args.request_timeout_s))
        t0 = time.perf_counter()
        results = asyncio.run(
            replay(cluster.address, requests, args.request_timeout_s, args.timeout_s)
        )
        print(f"  replayed in {time.perf_counter() - t0:.1f}s")
        return results


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:8.1f}"


def _brief(s: Summary) -> str:
    return (
        f"TTFT p50 {1000 * s.ttft_p50:.1f} ms, TPOT p50 {1000 * s.tpot_p50:.1f} ms,"
        f" {s.output_tok_s:.1f} tok/s, errors {s.errors}"
    )


def print_table(shape: Shape, s: Summary, repeats: int, results: Sequence[RequestResult]) -> None:
    """`s` combines `repeats` rounds: counts are totals, the rest medians of rounds."""
    print(f"\n{shape.name} ({shape.describe()}), medians of {repeats} round(s)")
    print(
        f"  requests {s.requests}, completed {s.completed}, errors {s.errors},"
        f" wrong output length {s.wrong_length} (totals over the rounds)"
    )
    print(f"  {'':15}{'p50':>8} {'p90':>8}")
    print(f"  {'TTFT ms':15}{_ms(s.ttft_p50)} {_ms(s.ttft_p90)}")
    print(f"  {'TPOT ms':15}{_ms(s.tpot_p50)} {_ms(s.tpot_p90)}")
    print(f"  {'end-to-end ms':15}{_ms(s.e2e_p50)} {_ms(s.e2e_p90)}")
    if not math.isnan(s.kv_transfer_p50):  # some KV moved
        print(f"  {'prefill+KV ms':15}{_ms(s.kv_transfer_p50)} {_ms(s.kv_transfer_p90)}  (*)")
    print(
        f"  output {s.output_tokens // repeats} tokens per round in {s.duration_s:.1f}s:"
        f" {s.output_tok_s:.1f} tok/s, {s.req_s:.2f} req/s;"
        f" prompt tokens from prefix caches {s.cached_tokens // repeats} per round"
    )
    if not math.isnan(s.kv_transfer_p50):
        print(
            "  (*) the router's Timing.kv_transfer_s over requests that took the prefill hop:"
            " it starts when the prefill worker opens its KV push, before the prompt is"
            " scheduled, so it holds prefill queueing and compute as well as the transfer"
        )
    for r in results:
        if r.error:
            print(f"  ERROR request {r.index}: {r.error}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def build_scaling(spec: TraceSpec, args: argparse.Namespace) -> Scaling:
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Scaling)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(spec.scaling, **given)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", choices=sorted(TRACES), default="mooncake")
    parser.add_argument("--trace-dir", type=Path, default=TRACE_DIR)
    parser.add_argument("--requests", type=int, default=64, help="rows replayed (default 64)")
    parser.add_argument("--start", type=int, default=0, help="first trace row (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="prompt content seed")
    for f in dataclasses.fields(Scaling):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(getattr(Scaling(), f.name)),
            default=None,
            help="default: per trace (printed)",
        )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of both configurations (medians)"
    )
    parser.add_argument("--kv-cache-mib", type=int, default=256, help="KV cache per worker")
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=1,
        help="torch threads per worker (OMP_NUM_THREADS); 0 leaves torch's default",
    )
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument(
        "--timeout-s", type=float, default=300.0, help="overall limit of one replay"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.start < 0 or args.repeats < 1:
        parser.error("--requests and --repeats must be >= 1, --start >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = TRACES[args.trace]
    scaling = build_scaling(spec, args)
    path = args.trace_dir / spec.path
    with path.open(encoding="utf-8") as f:
        rows = spec.parse(f, args.requests, args.start)
    if len(rows) < args.requests:
        print(f"note: {path} has only {len(rows)} rows from row {args.start}")
    requests = build_requests(rows, scaling, args.seed)
    if args.worker_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.worker_threads)  # inherited by the workers
    describe_workload(args, path, rows, requests, scaling)

    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix="kvferry-bench-e2e-"))
    print(f"cluster logs under {log_root}")
    max_tokens = [r.max_tokens for r in requests]
    runs: dict[str, list[list[RequestResult]]] = {shape.name: [] for shape in SHAPES}
    rounds: dict[str, list[Summary]] = {shape.name: [] for shape in SHAPES}
    for i in range(args.repeats):
        # Alternate the order so that drift on a shared machine hits both alike.
        for shape in SHAPES if i % 2 == 0 else SHAPES[::-1]:
            results = run_shape(shape, requests, args, log_root / f"{shape.name}-{i + 1}")
            runs[shape.name].append(results)
            rounds[shape.name].append(summarize(results, max_tokens))
            print(f"  {shape.name} round {i + 1}: {_brief(rounds[shape.name][-1])}", flush=True)
    summaries = {name: combine(s) for name, s in rounds.items()}
    for shape in SHAPES:
        all_results = [r for results in runs[shape.name] for r in results]
        print_table(shape, summaries[shape.name], args.repeats, all_results)

    # Every run's greedy tokens against round 1's disaggregated run.
    reference = runs["disaggregated"][0]
    compared = differ = 0
    for name, name_runs in runs.items():
        for i, results in enumerate(name_runs):
            if name == "disaggregated" and i == 0:
                continue
            c, d = count_mismatches(reference, results)
            compared, differ = compared + c, differ + d
    if args.json is not None:
        write_json(args, scaling, requests, runs, rounds, summaries, (compared, differ))
    print(
        f"\ngreedy token ids vs round 1 disaggregated (colocated runs and other rounds):"
        f" {differ} mismatches in {compared} request pairs compared"
    )
    print(f"load average {os.getloadavg()[0]:.2f} after the run")
    d, c = summaries["disaggregated"], summaries["colocated"]
    print(
        f"disaggregated / colocated (medians of {args.repeats} rounds):"
        f" TTFT p50 {_ratio(d.ttft_p50, c.ttft_p50)},"
        f" TPOT p50 {_ratio(d.tpot_p50, c.tpot_p50)},"
        f" output tok/s {_ratio(d.output_tok_s, c.output_tok_s)}"
    )
    failed = d.errors + c.errors + d.wrong_length + c.wrong_length + differ
    return 1 if failed else 0


def describe_workload(
    args: argparse.Namespace,
    path: Path,
    rows: Sequence[TraceRow],
    requests: Sequence[ReplayRequest],
    scaling: Scaling,
) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    threads = args.worker_threads or "torch default"
    print(
        f"device: {cpu_name()}, {os.cpu_count()} CPUs, {threads} torch thread(s) per worker;"
        f" load average {os.getloadavg()[0]:.2f} before the run (other processes share the CPUs)"
    )
    print(f"commit {commit}, {time.strftime('%Y-%m-%d')}, model tiny on CPU")
    print(f"trace: {path} rows {args.start}..{args.start + len(rows) - 1}")
    print(f"scaling: {scaling}")
    prompt_lens = [len(r.prompt) for r in requests]
    outs = [r.max_tokens for r in requests]
    span = rows[-1].arrival_s - rows[0].arrival_s
    threshold = RouterConfig().short_prompt_tokens
    reusable = reusable_prefix_tokens([r.prompt for r in requests], KV_BLOCK_SIZE)
    print(
        f"workload: {len(requests)} requests; prompt tokens (BOS included) mean"
        f" {sum(prompt_lens) / len(requests):.0f}, min {min(prompt_lens)}, max"
        f" {max(prompt_lens)} (trace mean {sum(r.input_tokens for r in rows) / len(rows):.0f});"
        f" output tokens mean {sum(outs) / len(outs):.1f}, total {sum(outs)}"
        f" (trace mean {sum(r.output_tokens for r in rows) / len(rows):.0f})"
    )
    print(
        f"arrivals: trace span {span:.1f}s -> replay span {requests[-1].arrival_s:.1f}s"
        f" ({len(requests) / max(requests[-1].arrival_s, 1e-9):.2f} req/s offered);"
        f" {sum(n > threshold for n in prompt_lens)} prompts exceed the router's"
        f" {threshold}-token short-prompt threshold (prefill hop when disaggregated)"
    )
    print(
        f"prefix reuse an infinite cache of {KV_BLOCK_SIZE}-token blocks could serve:"
        f" {reusable} of {sum(prompt_lens)} prompt tokens"
        f" ({100 * reusable / sum(prompt_lens):.1f}%)"
    )


def _finite(fields: dict[str, object]) -> dict[str, object]:
    """NaN (a percentile of nothing) as null, which JSON can hold."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def write_json(
    args: argparse.Namespace,
    scaling: Scaling,
    requests: Sequence[ReplayRequest],
    runs: dict[str, list[list[RequestResult]]],
    rounds: dict[str, list[Summary]],
    summaries: dict[str, Summary],
    mismatches: tuple[int, int],
) -> None:
    doc = {
        "trace": args.trace,
        "start": args.start,
        "repeats": args.repeats,
        "scaling": dataclasses.asdict(scaling),
        "requests": [
            {
                "index": r.index,
                "arrival_s": r.arrival_s,
                "prompt_tokens": len(r.prompt),
                "max_tokens": r.max_tokens,
            }
            for r in requests
        ],
        "summaries": {name: _finite(dataclasses.asdict(s)) for name, s in summaries.items()},
        "rounds": {
            name: [_finite(dataclasses.asdict(s)) for s in per_round]
            for name, per_round in rounds.items()
        },
        "results": {
            name: [
                [{k: v for k, v in dataclasses.asdict(r).items() if k != "token_ids"} for r in run]
                for run in name_runs
            ]
            for name, name_runs in runs.items()
        },
        "token_mismatches": {"compared": mismatches[0], "differ": mismatches[1]},
    }
    args.json.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
