"""KV transfer bandwidth: kvferry's gRPC push vs a raw TCP stream, process to process.

The payload is `--total-mib` of KV blocks of a Llama-3-8B-like shape (32 layers, 8 KV
heads, head dim 128, block size 16, bfloat16: 2 MiB per block across layers), held by
the sending process as one slab per layer, the way a prefill worker exports it. The gRPC
side pushes them with `GrpcKVSender` (chunking, CRC32C, protobuf, HTTP/2) to a
`KVTransferServer` in another process whose sink copies every verified slab into a
preallocated KV cache. The baseline streams the same bytes over a plain TCP socket into
a preallocated buffer in another process. A third row shows what gRPC itself costs: the
same serialized messages, prepared in advance, streamed to a handler that only counts
them (no checksum, no copy into a cache). Each is timed until the receiver has
everything and says so.

    .venv/bin/python benchmarks/bench_kv_transfer.py [--total-mib 256] [--repeats 5]

Rounds alternate between the three; medians are reported, and the ratio (kvferry gRPC / raw
GB/s) is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from _report import cpu_name

from kvferry.services.kvtransfer import (
    GrpcKVSender,
    KVSlab,
    KVTransferConfig,
    KVTransferServicer,
    split_slab,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_HEADER = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Shape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        """One block across all layers, K and V."""
        per_layer = 2 * self.block_size * self.num_kv_heads * self.head_dim
        return self.num_layers * per_layer * self.dtype.itemsize

    def cache(self, num_blocks: int) -> torch.Tensor:
        # [layers, 2, blocks, block_size, kv_heads, head_dim]
        dims = (self.num_layers, 2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        return torch.empty(dims, dtype=self.dtype)


# -- receivers (run in their own processes) ----------------------------------------------
class CacheSink:
    """Copies each verified slab into a preallocated cache, like a decode worker."""

    def __init__(self, cache: torch.Tensor) -> None:
        self.cache = cache

    def accept(self, slab: KVSlab) -> None:
        first = slab.block_positions[0]
        n = len(slab.block_positions)
        if slab.block_positions == list(range(first, first + n)):
            self.cache[slab.layer_start : slab.layer_end, :, first : first + n].copy_(slab.data)
        else:
            self.cache[slab.layer_start : slab.layer_end, :, slab.block_positions] = slab.data

    def complete(self, request_id: str, first_token_id: int) -> None:
        pass


async def count_bytes(messages: AsyncIterator[bytes], context: object) -> bytes:
    total = 0
    async for message in messages:
        total += len(message)
    return str(total).encode()


async def serve_grpc(
    shape: Shape, num_blocks: int, config: KVTransferConfig, options: list[tuple[str, int]]
) -> None:
    # NOTE: the cache copy is one memcpy; torch's intra-op threads would only spin and
    # steal CPU from gRPC's threads (a worker copies on its engine thread or the GPU).
    torch.set_num_threads(1)
    server = grpc.aio.server(options=[*config.grpc_options(), *options])
    KVTransferServicer(CacheSink(shape.cache(num_blocks)), config).add_to_server(server)
    bare = {"Push": grpc.stream_unary_rpc_method_handler(count_bytes)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", bare),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def serve_raw(total_bytes: int) -> None:
    buffer = bytearray(total_bytes)
    view = memoryview(buffer)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                (size,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
                got = 0
                while got < size:
                    n = conn.recv_into(view[got:size])
                    if n == 0:
                        raise ConnectionError("sender closed early")
                    got += n
                conn.sendall(b"k")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError("sender closed early")
        data += part
    return data


# -- senders -------------------------------------------------------------------------------
def make_slabs(shape: Shape, num_blocks: int) -> list[KVSlab]:
    gen = torch.Generator().manual_seed(0)
    dims = (1, 2, num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
    positions = list(range(num_blocks))
    return [
        KVSlab(
            "bench", layer, layer + 1, positions, torch.randn(dims, generator=gen).to(shape.dtype)
        )
        for layer in range(shape.num_layers)
    ]


async def push_grpc(sender: GrpcKVSender, endpoint: str, slabs: list[KVSlab], rid: str) -> float:
    mine = [dataclasses.replace(s, request_id=rid) for s in slabs]  # same tensors
    stats = await sender.push(endpoint, rid, mine, first_token_id=1, deadline_s=120)
    return stats.seconds


async def push_bare(channel: grpc.aio.Channel, messages: list[bytes]) -> float:
    push = channel.stream_unary("/bench.Bare/Push")  # bytes in, bytes out
    start = time.perf_counter()
    answer = await push(iter(messages), timeout=120)
    elapsed = time.perf_counter() - start
    if int(answer) != sum(map(len, messages)):
        raise RuntimeError("bare gRPC receiver lost bytes")
    return elapsed


def push_raw(port: int, slabs: list[KVSlab]) -> float:
    views = [s.data.view(torch.uint8).numpy().data for s in slabs]  # zero-copy
    total = sum(v.nbytes for v in views)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(_HEADER.pack(total))
        for view in views:
            conn.sendall(view)
        if conn.recv(1) != b"k":
            raise ConnectionError("raw receiver did not acknowledge")
    return time.perf_counter() - start


def spawn(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"receiver {args} did not start (said {line!r})")
    return proc, int(line)


async def measure(args: argparse.Namespace, shape: Shape, num_blocks: int) -> None:
    config = KVTransferConfig(max_chunk_bytes=int(args.max_chunk_mib * (1 << 20)))
    slabs = make_slabs(shape, num_blocks)
    total = sum(s.nbytes for s in slabs)
    common = [*_shape_args(args), "--blocks", str(num_blocks)]
    grpc_proc, grpc_port = spawn(["--serve", "grpc", *common])
    raw_proc, raw_port = spawn(["--serve", "raw", *common])
    sender = GrpcKVSender(config, channel_options=_options(args))
    endpoint = f"127.0.0.1:{grpc_port}"
    channel = grpc.aio.insecure_channel(endpoint, options=[*config.grpc_options(), *_options(args)])
    messages = [c.to_bytes() for s in slabs for c in split_slab(s, config.max_chunk_bytes)]
    try:
        await push_grpc(sender, endpoint, slabs, "warm-up")
        await push_bare(channel, messages)
        push_raw(raw_port, slabs)
        runs_grpc, runs_bare, runs_raw = [], [], []
        for i in range(args.repeats):  # alternate so drift hits all alike
            runs_raw.append(push_raw(raw_port, slabs))
            runs_bare.append(await push_bare(channel, messages))
            runs_grpc.append(await push_grpc(sender, endpoint, slabs, f"r{i}"))
    finally:
        await channel.close()
        await sender.close()
        for proc in (grpc_proc, raw_proc):
            proc.terminate()
            proc.wait(timeout=10)

    t_grpc, t_raw = statistics.median(runs_grpc), statistics.median(runs_raw)
    t_bare = statistics.median(runs_bare)
    gbps_grpc, gbps_raw = total / t_grpc / 1e9, total / t_raw / 1e9
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{total / v / 1e9:.2f}" for v in values)

    print(f"device: {cpu_name()}, {os.cpu_count()} CPUs; loopback between two processes")
    print(f"torch {torch.__version__}, commit {commit}, {time.strftime('%Y-%m-%d')}")
    print(
        f"payload: {total / (1 << 20):.0f} MiB = {num_blocks} blocks x"
        f" {shape.block_bytes / (1 << 20):.2f} MiB ({shape.num_layers} layers,"
        f" {shape.num_kv_heads} kv heads, head dim {shape.head_dim}, block {shape.block_size},"
        f" {args.dtype}), {len(slabs)} slabs, chunks of {config.max_chunk_bytes >> 20} MiB"
    )
    print(f"medians of {args.repeats} alternating rounds")
    print(f"rounds (GB/s): raw {fmt(runs_raw)}; bare grpc {fmt(runs_bare)}; grpc {fmt(runs_grpc)}")
    print(f"{'transport':<34}{'seconds':>10}{'GB/s':>10}")
    print(f"{'raw TCP socket (baseline)':<34}{t_raw:>10.3f}{gbps_raw:>10.2f}")
    print(f"{'bare gRPC (prepared messages)':<34}{t_bare:>10.3f}{total / t_bare / 1e9:>10.2f}")
    print(f"{'kvferry gRPC push (crc32c)':<34}{t_grpc:>10.3f}{gbps_grpc:>10.2f}")
    print(f"kvferry push / bare gRPC: {t_bare / t_grpc:.2f}")
    print(f"ratio grpc/raw: {gbps_grpc / gbps_raw:.2f}")


def _options(args: argparse.Namespace) -> list[tuple[str, int]]:
    pairs = (o.split("=", 1) for o in args.grpc_option)
    return [(key, int(value)) for key, value in pairs]


def _shape_args(args: argparse.Namespace) -> list[str]:
    return [
        "--num-layers",
        str(args.num_layers),
        "--kv-heads",
        str(args.kv_heads),
        "--head-dim",
        str(args.head_dim),
        "--block-size",
        str(args.block_size),
        "--dtype",
        args.dtype,
        "--max-chunk-mib",
        str(args.max_chunk_mib),
        *(f"--grpc-option={o}" for o in args.grpc_option),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--max-chunk-mib", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument(
        "--grpc-option",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="extra gRPC channel/server option, on both sides (repeatable)",
    )
    parser.add_argument("--serve", choices=["grpc", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = Shape(
        args.num_layers, args.kv_heads, args.head_dim, args.block_size, DTYPES[args.dtype]
    )

    if args.serve == "grpc":
        config = KVTransferConfig(max_chunk_bytes=int(args.max_chunk_mib * (1 << 20)))
        asyncio.run(serve_grpc(shape, args.blocks, config, _options(args)))
    elif args.serve == "raw":
        serve_raw(args.blocks * shape.block_bytes)
    else:
        num_blocks = max(1, (args.total_mib << 20) // shape.block_bytes)
        asyncio.run(measure(args, shape, num_blocks))


if __name__ == "__main__":
    main()
