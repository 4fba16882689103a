"""How fast the router decides where a request goes, with 1,000 workers and a cluster KV
index of about a million blocks; and how much memory that index takes per block.

    .venv/bin/python benchmarks/bench_placement.py [--decisions 20000] [--json out.json]

The cluster: 500 prefill + 500 decode workers, 4 per node (2 + 2), 18 nodes per NVLink
domain (an NVL72 rack), 7 racks per zone, 2 zones. Each worker reports a random load.
The index holds what such a cluster caches: 64 system prompts of 32 blocks, each cached on
about 8% of the workers, and conversation sessions (a system prompt + ~100 unique blocks),
each cached on the prefill and the decode worker that served it, until about a million
distinct hashes. Requests: 70% continue a session (its blocks + a new turn), 20% start one
(a system prompt + new blocks), 10% share nothing; 1-8k tokens, 16-token blocks.

Each decision is `policy.place(request, view)` alone: the prefix lookup in the index,
drawing candidates, filters, scorers and the pair picker (hashing the prompt's blocks is
separate; printed below the table). The baseline, in the same run on the same requests, is
the least-loaded policy (placement v1: every worker scored, no cache or topology). Between
decisions the chosen workers' in-flight counts change, as in the router.
"""

from __future__ import annotations

import argparse
import array
import datetime
import gc
import json
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_name

from kvferry.services.engine.block_hash import hash_block_tokens
from kvferry.services.router.kv_index import KVIndex, WorkerUpdate
from kvferry.services.router.placement import (
    PlacementRequest,
    StaticView,
    build_policy,
    named_config,
)
from kvferry.services.router.workers import (
    Role,
    WorkerId,
    WorkerInfo,
    WorkerLoad,
    WorkerRecord,
)
from kvferry.topology import NODE, NVLINK_DOMAIN, RACK, ZONE, Tier

BLOCK = 16
KV_BYTES_PER_BLOCK = 16 * 128 * 1024  # Llama-3-8B-like: 128 KiB per token
PER_NODE, NODES_PER_DOMAIN, RACKS_PER_ZONE = 4, 18, 7


def make_workers(n: int, rng: random.Random) -> list[WorkerRecord]:
    workers = []
    for i in range(n):
        node = i // PER_NODE
        domain = node // NODES_PER_DOMAIN
        zone = domain // RACKS_PER_ZONE
        role = Role.PREFILL if i % PER_NODE < PER_NODE // 2 else Role.DECODE
        labels = {
            NODE: f"n{node}",
            NVLINK_DOMAIN: f"nvl{domain}",
            RACK: f"r{domain}",
            ZONE: f"z{zone}",
        }
        info = WorkerInfo(
            WorkerId(f"{role.value}-{i:04}"),
            role,
            f"10.{zone}.{domain}.{i % 250}:7000",
            f"10.{zone}.{domain}.{i % 250}:7000",
            "llama-8b",
            labels,
            block_size=BLOCK,
            kv_bytes_per_block=KV_BYTES_PER_BLOCK,
        )
        total = 20_000
        load = WorkerLoad(
            num_waiting=rng.randrange(4),
            num_running=rng.randrange(64),
            prefill_tokens_waiting=rng.randrange(32_000) if role is Role.PREFILL else 0,
            free_kv_blocks=rng.randrange(total),
            total_kv_blocks=total,
        )
        workers.append(WorkerRecord(info, load, 0.0, in_flight=rng.randrange(4)))
    return workers


def make_cache(
    workers: Sequence[WorkerRecord], target_hashes: int, rng: random.Random
) -> tuple[dict[WorkerId, array.array[int]], list[array.array[int]], list[array.array[int]]]:
    """Per worker, the hashes it caches (as arrays: no int objects until the index is
    built); the system prompts; the sessions."""
    prefill = [w for w in workers if w.info.role is Role.PREFILL]
    decode_by_domain: dict[str, list[WorkerRecord]] = {}
    for w in workers:
        if w.info.role is Role.DECODE:
            decode_by_domain.setdefault(w.info.labels[NVLINK_DOMAIN], []).append(w)
    held: dict[WorkerId, list[int]] = {w.info.worker_id: [] for w in workers}
    systems = [[rng.getrandbits(64) for _ in range(32)] for _ in range(64)]
    for w in workers:
        for s in rng.sample(range(len(systems)), 5):
            held[w.info.worker_id].extend(systems[s])
    sessions = []
    distinct = 64 * 32
    while distinct < target_hashes:
        unique = [rng.getrandbits(64) for _ in range(rng.randrange(40, 160))]
        chain = systems[rng.randrange(len(systems))] + unique
        p = rng.choice(prefill)
        d = rng.choice(decode_by_domain[p.info.labels[NVLINK_DOMAIN]])
        held[p.info.worker_id].extend(chain)
        held[d.info.worker_id].extend(chain)
        sessions.append(array.array("Q", chain))
        distinct += len(unique)
    return (
        {w: array.array("Q", hs) for w, hs in held.items()},
        [array.array("Q", s) for s in systems],
        sessions,
    )


def build_index(held: dict[WorkerId, array.array[int]]) -> tuple[KVIndex, int]:
    """The index, and the bytes it holds (tracemalloc; the int objects are created here,
    as the router creates them when it parses GetStats)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = KVIndex()
    for wid, hashes in held.items():
        index.apply(wid, WorkerUpdate(incarnation=1, last_seq=0, snapshot=hashes.tolist()))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return index, used


def make_requests(
    n: int,
    systems: Sequence[array.array[int]],
    sessions: Sequence[array.array[int]],
    rng: random.Random,
) -> list[PlacementRequest]:
    out = []
    for _ in range(n):
        roll = rng.random()
        new = [rng.getrandbits(64) for _ in range(rng.randrange(8, 64))]
        if roll < 0.7:
            chain = [*rng.choice(sessions)][: rng.randrange(64, 400)] + new
        elif roll < 0.9:
            chain = [*rng.choice(systems), *new]
        else:
            chain = new + [rng.getrandbits(64) for _ in range(rng.randrange(0, 400))]
        tokens = len(chain) * BLOCK + rng.randrange(BLOCK)
        out.append(PlacementRequest(tokens, tuple(chain), block_size=BLOCK))
    return out


def run(
    policy_name: str, requests: Sequence[PlacementRequest], view: StaticView, seed: int
) -> dict[str, float]:
    policy = build_policy(named_config(policy_name, seed=seed))
    by_id = {w.info.worker_id: w for w in view.workers()}
    rng = random.Random(seed)
    placed: list[WorkerRecord] = []
    times = []
    hit_fraction = 0.0
    near = 0
    hops = 0
    clock = time.perf_counter_ns
    gc.disable()
    start = clock()
    for request in requests:
        t0 = clock()
        placement = policy.place(request, view)
        times.append(clock() - t0)
        # as in the router: the placed workers' in-flight counts rise, older ones finish
        for wid in (placement.decode, placement.prefill):
            if wid is not None:
                record = by_id[wid]
                record.in_flight += 1
                placed.append(record)
        while len(placed) > 2000:
            done = placed.pop(rng.randrange(len(placed)))
            done.in_flight = max(0, done.in_flight - 1)
        if request.block_hashes:
            hit_fraction += placement.prefill_hit_blocks / len(request.block_hashes)
        if placement.prefill is not None:
            hops += 1
            near += placement.tier is not None and placement.tier <= Tier.SAME_NVLINK_DOMAIN
    total_s = (clock() - start) / 1e9
    gc.enable()
    for record in placed:
        record.in_flight = max(0, record.in_flight - 1)
    times.sort()
    return {
        "p50_us": times[len(times) // 2] / 1e3,
        "p99_us": times[int(len(times) * 0.99)] / 1e3,
        "mean_us": statistics.fmean(times) / 1e3,
        "decisions_per_s": len(requests) / total_s,
        "prefix_hit_fraction": hit_fraction / len(requests),
        "hops_within_nvlink_domain": near / hops if hops else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument(
        "--blocks", type=int, default=1_000_000, help="distinct hashes in the index"
    )
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?"
    )
    today = datetime.date.today().isoformat()
    python = sys.version.split()[0]
    print(f"# bench_placement: {cpu_name()} (one core), {today}, commit {commit}, Python {python}")

    workers = make_workers(args.workers, rng)
    held, systems, sessions = make_cache(workers, args.blocks, rng)
    t0 = time.perf_counter()
    index, index_bytes = build_index(held)
    build_s = time.perf_counter() - t0
    entries = index.num_entries
    print(
        f"workers {len(workers)}, index: {index.num_hashes:,} distinct hashes, {entries:,}"
        f" (worker, block) entries, built from snapshots in {build_s:.1f} s"
    )
    requests = make_requests(args.decisions, systems, sessions, rng)
    view = StaticView(workers, index=index)
    for name in ("kvferry", "least-loaded"):  # warm-up (pools, caches)
        run(name, requests[:500], view, args.seed)
    results = {name: run(name, requests, view, args.seed) for name in ("kvferry", "least-loaded")}

    # the index's share of a decision: the same lookups alone (after the runs above, so as
    # cold in the CPU caches as inside a decision)
    t0 = time.perf_counter()
    for request in requests:
        if request.block_hashes:
            index.prefix_hits(request.block_hashes)
    lookup_us = (time.perf_counter() - t0) / len(requests) * 1e6

    prompt = [rng.randrange(128_000) for _ in range(2048)]
    t0 = time.perf_counter()
    for _ in range(50):
        hash_block_tokens(prompt, BLOCK)
    hash_us = (time.perf_counter() - t0) / 50 * 1e6

    print()
    print(
        "| policy | p50 µs | p99 µs | mean µs | decisions/s | prefill prefix hit"
        " | hops in NVLink domain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['mean_us']:.0f} |"
            f" {r['decisions_per_s']:,.0f} | {r['prefix_hit_fraction']:.0%} |"
            f" {r['hops_within_nvlink_domain']:.0%} |"
        )
    per_hash = index_bytes / index.num_hashes
    per_entry = index_bytes / entries
    print()
    print(
        f"index memory (tracemalloc): {index_bytes / 2**20:.0f} MiB = {per_hash:.0f} bytes per"
        f" distinct block hash, {per_entry:.0f} bytes per (worker, block) entry (target <= 128)"
    )
    print(f"of a kvferry decision, the KV index lookup alone: {lookup_us:.0f} µs per request")
    print(f"hashing a 2,048-token prompt's blocks (router, outside the decision): {hash_us:.0f} µs")
    k, ll = results["kvferry"], results["least-loaded"]
    targets = (
        f"targets: p99 < 200 µs: {'met' if k['p99_us'] < 200 else 'NOT met'};"
        f" >= 20,000 decisions/s: {'met' if k['decisions_per_s'] >= 20_000 else 'NOT met'};"
        f" <= 128 bytes per block: {'met' if per_hash <= 128 else 'NOT met'}"
    )
    print(targets)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": results,
                    "index_bytes": index_bytes,
                    "hashes": index.num_hashes,
                    "entries": entries,
                    "index_lookup_us": lookup_us,
                },
                indent=2,
            )
        )
    print(
        f"kvferry vs least-loaded decisions/s: {k['decisions_per_s'] / ll['decisions_per_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
