"""The `kvferry` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

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
    from kvferry.services.worker.config import WorkerConfig

    parser = argparse.ArgumentParser(prog="kvferry", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate text with the engine in this process (offline)",
        description="Run the engine in-process on one or more prompts and print the outputs"
        " with tokens/s.",
    )
    gen.add_argument("prompts", nargs="*", help="prompts (default: a few built-in ones)")
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
    add_dataclass_args(worker, WorkerConfig)
    add_dataclass_args(worker, EngineConfig)
    worker.set_defaults(func=_worker)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(_version()) or 0)
    return parser


def _version() -> str:
    from kvferry import __version__

    return __version__


def _generate(args: argparse.Namespace) -> int:
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


def _worker(args: argparse.Namespace) -> int:
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.worker.config import WorkerConfig
    from kvferry.services.worker.main import run

    run(dataclass_from_args(EngineConfig, args), dataclass_from_args(WorkerConfig, args))
    return 0
