"""A NaN-poisoned paged KV cache for the attention kernel tests.

Every slot no sequence owns is NaN, including the unwritten tail of each sequence's last
block; sequences sit on shuffled blocks (never block 0), and block-table padding points at
block 0, which is all NaN. A kernel that reads one slot it should not, or leaves an output
element unwritten (outputs start as NaN too), fails the comparison.
"""

from __future__ import annotations

import torch

from kvferry.kernels.attention_ref import write_kv_cache

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PagedWorld:
    def __init__(
        self,
        *,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        num_blocks: int,
        dtype: torch.dtype,
        seed: int,
    ) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.block_size, self.dtype = block_size, dtype
        shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
        self.cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
        # Out of order: a shuffled free list hands out blocks in no particular order.
        self.free = (torch.randperm(num_blocks - 1, generator=self.gen) + 1).tolist()

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.dtype).to(DEVICE)

    def add_sequence(self, length: int) -> list[int]:
        """Write `length` random K/V tokens on fresh blocks; return the block table."""
        table = [self.free.pop() for _ in range(-(-length // self.block_size))]
        key = self.randn(length, self.num_kv_heads, self.head_dim)
        value = self.randn(length, self.num_kv_heads, self.head_dim)
        write_kv_cache(key, value, self.cache, self.slots(table, 0, length))
        return table

    def slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        bs = self.block_size
        return torch.tensor(
            [table[p // bs] * bs + p % bs for p in range(start, end)],
            dtype=torch.long,
            device=DEVICE,
        )


def padded_tables(tables: list[list[int]], dtype: torch.dtype, extra: int = 0) -> torch.Tensor:
    """[N, max_len + extra] block tables padded with block 0 (all NaN)."""
    width = max(len(t) for t in tables) + extra
    rows = [t + [0] * (width - len(t)) for t in tables]
    return torch.tensor(rows, dtype=dtype, device=DEVICE)


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Kernel (fp32 accumulation) vs the float32 reference on the same rounded inputs."""
    if dtype == torch.float32:
        return {"atol": 2e-5, "rtol": 1e-4}
    return {"atol": 2e-3, "rtol": 1e-2}  # the kernel rounds P to fp16 before P @ V
