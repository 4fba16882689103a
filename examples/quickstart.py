"""The README's main command: start a local cluster (router + 1 prefill + 1 decode worker on
127.0.0.1, the built-in `tiny` model on CPU), send a few requests through the SDK, print
each output with its TTFT and tokens/s, then stop the cluster.

    .venv/bin/python examples/quickstart.py [--model tiny] [--prefill 1] [--decode 1]
"""

from __future__ import annotations

import argparse
import time

import kvferry
from kvferry.local_cluster import LocalCluster

PROMPTS = [
    "Hello, kvferry!",
    # Longer than the router's 64-token threshold: prefilled on the prefill worker, its KV
    # pushed to the decode worker over gRPC.
    "Disaggregated serving splits the prefill of a prompt, which is bound by compute, from"
    " the decode of its tokens, which is bound by memory bandwidth.",
    "KV cache blocks travel between workers",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prefill", type=int, default=1)
    parser.add_argument("--decode", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    print(f"starting router + {args.prefill} prefill + {args.decode} decode ({args.model})...")
    started = time.perf_counter()
    with LocalCluster(model=args.model, prefill=args.prefill, decode=args.decode, port=0) as up:
        print(f"cluster up at {up.address} in {time.perf_counter() - started:.1f}s")
        with kvferry.Client(up.address) as client:
            for prompt in PROMPTS:
                sent = time.perf_counter()
                ttft = None
                text, n_tokens = [], 0
                for chunk in client.generate(prompt, max_tokens=args.max_tokens, temperature=0):
                    if ttft is None and chunk.token_ids:
                        ttft = time.perf_counter() - sent
                    n_tokens += len(chunk.token_ids)
                    text.append(chunk.text)
                total = time.perf_counter() - sent
                rate = (n_tokens - 1) / (total - (ttft or 0)) if n_tokens > 1 else 0.0
                print(f"> {prompt!r}")
                print(f"  {''.join(text)!r}")
                print(
                    f"  {n_tokens} tokens  ttft={1000 * (ttft or 0):.1f}ms"
                    f"  decode={rate:.1f} tokens/s  total={total:.2f}s"
                )
        print("stopping the cluster")


if __name__ == "__main__":
    main()
