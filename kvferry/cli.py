"""The `kvferry` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvferry.config_args import add_dataclass_args, dataclass_from_args

DEFAULT_PROMPTS = (
    "The quick brown fox",
    "Disaggregated serving splits prefill and decode",
    "KV cache blocks travel between workers",
    "Hello, kvferry!",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ValueError as err:  # bad input or configuration: say what to fix, no traceback
        print(f"kvferry: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.router.config import RouterConfig
    from kvferry.services.worker.config import WorkerConfig

    parser = argparse.ArgumentParser(prog="kvferry", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate text: through a cluster (--target) or with an in-process engine",
        description="With --target, send the prompts to a running router and stream the"
        " text; without it, run the engine in this process (offline). Prints TTFT and"
        " tokens/s.",
    )
    gen.add_argument("prompts", nargs="*", help="prompts (default: a few built-in ones)")
    gen.add_argument("--target", default="", help="router HOST:PORT (default: offline engine)")
    _add_client_args(gen)
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    add_dataclass_args(gen, EngineConfig)
    gen.set_defaults(func=_generate)

    worker = sub.add_parser(
        "worker",
        help="run a prefill, decode or mixed worker (gRPC) until SIGTERM",
        description="Serve the Worker and KVTransfer gRPC services around an engine; on"
        " SIGTERM stop taking requests, finish in-flight ones, and exit.",
    )
    add_dataclass_args(worker, WorkerConfig, skip=("labels",))
    worker.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="topology label, overriding NVML and the operator (repeatable); KEY is one of"
        " node, nvlink_domain, rack, zone",
    )
    add_dataclass_args(worker, EngineConfig)
    worker.set_defaults(func=_worker)

    router = sub.add_parser(
        "router",
        help="run the router (client API, worker registry, placement) until SIGTERM",
        description="Serve the Generation API for clients and the Registry for workers.",
    )
    add_dataclass_args(router, RouterConfig)
    router.set_defaults(func=_router)

    up = sub.add_parser(
        "up",
        help="start a local cluster (router + workers as processes on 127.0.0.1)",
        description="Start a router and prefill/decode workers as child processes on"
        " 127.0.0.1, print the endpoint, and stop them all on Ctrl-C or SIGTERM.",
    )
    up.add_argument("--model", default="tiny", help="preset name or model folder")
    up.add_argument("--prefill", type=int, default=1, help="prefill workers")
    up.add_argument("--decode", type=int, default=1, help="decode workers")
    up.add_argument("--mixed", type=int, default=0, help="mixed (colocated) workers")
    up.add_argument("--port", type=int, default=50051, help="router port (0: any free one)")
    up.add_argument("--log-dir", default="", help="children's logs (default: a temp dir)")
    up.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra flag for every worker, e.g. --worker-arg=--num-kv-blocks=512 (repeatable)",
    )
    up.set_defaults(func=_up)

    status = sub.add_parser(
        "status",
        help="show a cluster's workers: role, state, load, KV usage",
        description="Ask a router for its registered workers and print one line each.",
    )
    status.add_argument("--target", default="127.0.0.1:50051", help="router HOST:PORT")
    _add_client_args(status)
    status.set_defaults(func=_status)

    from kvferry.sim.cli import add_sim_parser

    add_sim_parser(sub)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(_version()) or 0)
    return parser


def _version() -> str:
    from kvferry import __version__

    return __version__


def _add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default="", help="PEM CA bundle: connect with TLS")
    parser.add_argument("--token-file", default="", help="file holding the bearer token")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")


def _client(args: argparse.Namespace) -> Any:
    from kvferry.client import Client

    return Client(
        args.target,
        root_certificates=args.tls_ca or None,
        token_file=args.token_file or None,
        timeout=args.timeout,
    )


def _generate(args: argparse.Namespace) -> int:
    if args.target:
        return _generate_remote(args)
    from kvferry.sampling_params import SamplingParams
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.engine.llm import LLM

    config = dataclass_from_args(EngineConfig, args)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.sampling_seed,
    )
    prompts = list(args.prompts) or list(DEFAULT_PROMPTS)
    started = time.perf_counter()
    llm = LLM.from_config(config)
    loaded = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - loaded
    n_tokens = sum(len(o.token_ids) for o in outs)
    for prompt, out in zip(prompts, outs, strict=True):
        print(f"> {prompt!r}")
        reason = out.finish_reason.value if out.finish_reason else "?"
        print(f"  {out.text!r}  [{len(out.token_ids)} tokens, {reason}]")
    stats = llm.engine.stats()
    print(
        f"model={config.model} load={loaded - started:.2f}s generate={elapsed:.2f}s "
        f"output_tokens={n_tokens} tokens/s={n_tokens / elapsed:.1f} "
        f"kv_blocks={stats.total_blocks} free={stats.free_blocks}"
    )
    return 0


def _generate_remote(args: argparse.Namespace) -> int:
    from kvferry.errors import RequestError

    prompts = list(args.prompts) or list(DEFAULT_PROMPTS)
    with _client(args) as client:
        for prompt in prompts:
            print(f"> {prompt!r}")
            started = time.perf_counter()
            ttft = None
            n_tokens = 0
            reason = "?"
            print("  ", end="", flush=True)
            try:
                for chunk in client.generate(
                    prompt,
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    top_p=args.top_p,
                    seed=args.sampling_seed,
                ):
                    if ttft is None and chunk.token_ids:
                        ttft = time.perf_counter() - started
                    n_tokens += len(chunk.token_ids)
                    print(chunk.text, end="", flush=True)
                    if chunk.finish_reason is not None:
                        reason = chunk.finish_reason.value
            except RequestError as err:
                print()
                print(f"kvferry: error: {err}", file=sys.stderr)
                return 1
            elapsed = time.perf_counter() - started
            decode_s = elapsed - (ttft or 0.0)
            rate = (n_tokens - 1) / decode_s if n_tokens > 1 and decode_s > 0 else 0.0
            print()
            print(
                f"  [{n_tokens} tokens, {reason}] ttft={1000 * (ttft or 0):.1f}ms"
                f" tokens/s={rate:.1f} total={elapsed:.2f}s"
            )
    return 0


def _router(args: argparse.Namespace) -> int:
    from kvferry.services.router.config import RouterConfig
    from kvferry.services.router.main import run

    run(dataclass_from_args(RouterConfig, args))
    return 0


def _up(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from kvferry.local_cluster import ClusterStartError, LocalCluster

    cluster = LocalCluster(
        model=args.model,
        prefill=args.prefill,
        decode=args.decode,
        mixed=args.mixed,
        port=args.port,
        worker_args=list(args.worker_arg),
        log_dir=Path(args.log_dir) if args.log_dir else None,
    )
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: terminal closed
        signal.signal(sig, on_signal)
    try:
        cluster.start()
    except ClusterStartError as err:
        print(f"kvferry: error: {err}", file=sys.stderr)
        return 1
    print(
        f"kvferry cluster up: {args.model} with {args.prefill} prefill, {args.decode} decode,"
        f" {args.mixed} mixed worker(s)\n"
        f"  endpoint: {cluster.address}\n"
        f'  try:      kvferry generate --target {cluster.address} "Hello"\n'
        f"            kvferry status --target {cluster.address}\n"
        f"  logs:     {cluster.log_dir}\n"
        "Ctrl-C stops every process.",
        flush=True,
    )
    code = 0
    try:
        while not stopping:
            router = cluster.children[0].process
            if router is not None and router.poll() is not None:
                print(f"kvferry: error: the router exited ({router.returncode})", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    finally:
        print("stopping the cluster...", flush=True)
        cluster.stop()
        print("stopped", flush=True)
    return code


def _status(args: argparse.Namespace) -> int:
    from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
    from kvferry.errors import RequestError

    try:
        with _client(args) as client:
            status = client.cluster_status()
            models = client.list_models()
    except RequestError as err:
        print(f"kvferry: error: {args.target}: {err}", file=sys.stderr)
        return 1
    for model in models:
        print(
            f"model {model.name}: max_model_len={model.max_model_len}"
            f" prefill_workers={model.prefill_workers} decode_workers={model.decode_workers}"
        )
    print(_latency_line(status.latency))
    print(
        f"{'WORKER':<16} {'ROLE':<8} {'STATE':<9} {'ADDRESS':<22} {'WAIT':>4} {'RUN':>4}"
        f" {'INFLT':>5} {'KV FREE/TOTAL':>13} {'HB AGE':>7}  TOPOLOGY (SOURCE)"
    )
    for w in status.workers:
        role = gen_pb.WorkerRole.Name(w.role).removeprefix("WORKER_ROLE_").lower()
        state = gen_pb.WorkerState.Name(w.state).removeprefix("WORKER_STATE_").lower()
        kv = f"{w.load.free_kv_blocks}/{w.load.total_kv_blocks}"
        labels = ",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "-"
        print(
            f"{w.worker_id:<16} {role:<8} {state:<9} {w.address:<22} {w.load.num_waiting:>4}"
            f" {w.load.num_running:>4} {w.in_flight:>5} {kv:>13}"
            f" {w.last_heartbeat_age_s:>6.1f}s  {labels} ({w.topology_source or '?'})"
        )
        if w.topology_detail and "nvml" not in w.topology_source.split("+"):
            print(f"{'':<16} topology: {w.topology_detail}")  # why NVML told nothing
    if not status.workers:
        print("(no workers registered)")
    return 0


def _latency_line(lat: Any) -> str:
    head = (
        f"latency (last {lat.window_s:.0f} s): {lat.num_requests} finished, {lat.num_errors} failed"
    )
    if not lat.num_requests:
        return head
    return (
        f"{head}; TTFT p50/p90/p99 {lat.ttft_p50_ms:.0f}/{lat.ttft_p90_ms:.0f}/"
        f"{lat.ttft_p99_ms:.0f} ms; TPOT p50/p90/p99 {lat.tpot_p50_ms:.1f}/"
        f"{lat.tpot_p90_ms:.1f}/{lat.tpot_p99_ms:.1f} ms"
    )


def _worker(args: argparse.Namespace) -> int:
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.worker.config import WorkerConfig
    from kvferry.services.worker.main import run
    from kvferry.services.worker.topology import parse_label_flags

    labels = parse_label_flags(args.label)
    run(
        dataclass_from_args(EngineConfig, args),
        dataclass_from_args(WorkerConfig, args, labels=labels),
    )
    return 0
