"""Chained hashes of full KV blocks: the one function the engine and the router share.

A block's hash covers its own token ids and, through its parent's hash, its whole prefix,
so equal hashes at position i mean an identical prefix of (i + 1) * block_size tokens.

NOTE: the root is a fixed constant, never Python's `hash()` or a per-process random seed:
routers and workers in different processes (and pods) must compute identical values, or
prefix matching silently breaks across the cluster. `tests/unit/test_block_hash.py` pins
golden values; changing this function changes the wire meaning of every hash.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import NewType

BlockHash = NewType("BlockHash", int)
"""A 64-bit unsigned chained block hash."""

HASH_SCHEME_VERSION = 1
_ROOT = hashlib.sha256(b"kvferry/block-hash/v1").digest()


def _digest(parent: bytes, token_ids: Sequence[int]) -> bytes:
    payload = array("q", token_ids)
    if payload.itemsize != 8:  # pragma: no cover - every supported platform has 8-byte 'q'
        raise RuntimeError("array('q') is not 64-bit on this platform")
    # NOTE: little-endian on the wire so big-endian hosts agree.
    if array("H", [1]).tobytes()[0] == 0:  # pragma: no cover
        payload.byteswap()
    return hashlib.sha256(parent + payload.tobytes()).digest()


def _to_int(digest: bytes) -> BlockHash:
    return BlockHash(int.from_bytes(digest[:8], "little"))


def hash_block(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Hash one full block given its parent's hash (None for the first block)."""
    prefix = _ROOT if parent is None else parent.to_bytes(8, "little")
    return _to_int(_digest(prefix, token_ids))


def hash_block_tokens(
    token_ids: Sequence[int],
    block_size: int,
    parent: BlockHash | None = None,
) -> list[BlockHash]:
    """Chained hashes of every *full* block of `token_ids` (a partial tail is not hashed)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes: list[BlockHash] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes
