"""Chained block hashes: the cluster-wide contract between routers and engines.

The golden values below are the wire meaning of every hash. If one of these tests fails,
the hash function changed: every router and engine in a cluster must then be upgraded
together (and HASH_SCHEME_VERSION bumped), or prefix matching silently breaks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvferry.services.engine.block_hash import (
    HASH_SCHEME_VERSION,
    hash_block,
    hash_block_tokens,
)

H_1234 = 5323090601802173072
"""hash_block(None, [1, 2, 3, 4])"""
H_1234_5678 = 18082977231220571248
"""hash_block(H_1234, [5, 6, 7, 8])"""
H_RANGE32_BS16 = [10483746050389985313, 10378668116200505757]
"""hash_block_tokens(list(range(32)), 16)"""


def test_scheme_version_is_1() -> None:
    assert HASH_SCHEME_VERSION == 1


@pytest.mark.parametrize(
    ("parent", "tokens", "expected"),
    [
        (None, [1, 2, 3, 4], H_1234),
        (H_1234, [5, 6, 7, 8], H_1234_5678),
        (None, [0] * 16, 589244241114667832),
        (None, [], 12914336607814589705),
        (None, [-1, 2**63 - 1], 2247785266016424147),
        (0, [1, 2, 3, 4], 10901348894025849640),
    ],
)
def test_hash_block_golden_values(parent: int | None, tokens: list[int], expected: int) -> None:
    assert hash_block(parent, tokens) == expected


def test_hash_block_tokens_golden_values() -> None:
    assert hash_block_tokens(list(range(32)), 16) == H_RANGE32_BS16
    assert hash_block_tokens([1, 2, 3, 4, 5, 6, 7, 8], 4) == [H_1234, H_1234_5678]


def test_hash_matches_the_documented_wire_format() -> None:
    """sha256(parent bytes + tokens as little-endian int64), first 8 bytes little-endian.

    The root parent is sha256(b"kvferry/block-hash/v1"); later parents are the previous
    hash as 8 little-endian bytes. A router in another language implements exactly this.
    """

    def reference(parent: bytes, tokens: list[int]) -> int:
        payload = b"".join(t.to_bytes(8, "little", signed=True) for t in tokens)
        return int.from_bytes(hashlib.sha256(parent + payload).digest()[:8], "little")

    root = hashlib.sha256(b"kvferry/block-hash/v1").digest()
    first = reference(root, [1, 2, 3, 4])
    second = reference(first.to_bytes(8, "little"), [5, 6, 7, 8])
    assert [first, second] == [H_1234, H_1234_5678]


def test_hashes_do_not_depend_on_pythonhashseed(tmp_path: Path) -> None:
    code = (
        "from kvferry.services.engine.block_hash import hash_block, hash_block_tokens;"
        "print(hash_block(None, [1, 2, 3, 4]), *hash_block_tokens(list(range(32)), 16),"
        " hash(str(7)))"
    )
    printed = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=tmp_path,  # NOTE: the repo root shadows the stdlib `operator` module
            capture_output=True,
            text=True,
            check=True,
        )
        printed.append(result.stdout.split())
    # The last value is Python's own str hash: proves the two seeds really differed.
    assert printed[0][-1] != printed[1][-1]
    assert printed[0][:-1] == printed[1][:-1] == [str(H_1234), *map(str, H_RANGE32_BS16)]


def test_partial_tail_is_not_hashed() -> None:
    assert hash_block_tokens(list(range(31)), 16) == H_RANGE32_BS16[:1]
    assert hash_block_tokens(list(range(35)), 16) == H_RANGE32_BS16
    assert hash_block_tokens([1, 2, 3], 4) == []
    assert hash_block_tokens([], 4) == []


def test_hash_covers_the_whole_prefix() -> None:
    same_block_other_prefix = hash_block_tokens([9, 9, 9, 9, 5, 6, 7, 8], 4)
    assert same_block_other_prefix[1] != H_1234_5678
    # ...and the second block on its own (root parent) differs from both.
    assert hash_block(None, [5, 6, 7, 8]) not in (H_1234_5678, same_block_other_prefix[1])


def test_token_order_and_values_matter() -> None:
    assert hash_block(None, [4, 3, 2, 1]) != H_1234
    assert hash_block(None, [1, 2, 3, 5]) != H_1234


def test_parent_argument_continues_a_chain() -> None:
    tail = hash_block_tokens([5, 6, 7, 8, 9], 4, parent=H_1234)
    assert tail == [H_1234_5678]


def test_sequences_and_lists_hash_alike() -> None:
    assert hash_block(None, (1, 2, 3, 4)) == H_1234
    assert hash_block_tokens(range(8), 4) == hash_block_tokens(list(range(8)), 4)


def test_hashes_are_unsigned_64_bit() -> None:
    for h in [H_1234, H_1234_5678, *hash_block_tokens(list(range(160)), 16)]:
        assert 0 <= h < 2**64


@pytest.mark.parametrize("block_size", [0, -1, -16])
def test_non_positive_block_size_is_rejected(block_size: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        hash_block_tokens([1, 2, 3, 4], block_size)
