"""The attention backend and CUDA graphs are resolved once, from configuration and device."""

from __future__ import annotations

import pytest
import torch

from kvferry.errors import ConfigError
from kvferry.services.engine.attention import AttentionBackend, PrefillBatch
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.cuda_graphs import batch_buckets
from kvferry.services.engine.resolve import resolve_attention_backend, resolve_cuda_graphs

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TORCH, TRITON = AttentionBackend.TORCH, AttentionBackend.TRITON


@pytest.mark.parametrize(
    ("name", "device", "expected"),
    [
        ("auto", CPU, TORCH),
        ("auto", CUDA, TRITON),
        ("torch", CUDA, TORCH),
        ("triton", CUDA, TRITON),
    ],
)
def test_backend_resolution(name: str, device: torch.device, expected: AttentionBackend) -> None:
    assert resolve_attention_backend(name, device) is expected


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        resolve_attention_backend("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_attention_backend("triton", CPU) is TRITON


def test_unknown_backend_is_rejected_by_the_config() -> None:
    with pytest.raises(ValueError, match="attention_backend must be one of auto, torch, triton"):
        EngineConfig(attention_backend="flash")


@pytest.mark.parametrize(
    ("enabled", "device", "backend", "expected"),
    [
        (True, CUDA, TRITON, True),
        (False, CUDA, TRITON, False),
        (True, CUDA, TORCH, False),  # the references sync with the host: not capturable
        (True, CPU, TRITON, False),
    ],
)
def test_cuda_graphs_only_with_triton_on_cuda(
    enabled: bool, device: torch.device, backend: AttentionBackend, expected: bool
) -> None:
    assert resolve_cuda_graphs(EngineConfig(cuda_graphs=enabled), device, backend) is expected


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [(1, [1]), (2, [1, 2]), (5, [1, 2, 4, 5]), (64, [1, 2, 4, 8, 16, 32, 64])],
)
def test_batch_buckets(max_batch: int, expected: list[int]) -> None:
    assert batch_buckets(max_batch) == expected


def test_prefill_batch_pads_tables_and_checks_spans() -> None:
    batch = PrefillBatch.build([3, 8, 9], [5, 20], [[4, 2], [7, 1, 9, 3, 5]], CPU)
    assert batch.query_starts.tolist() == [3, 8, 9]
    assert batch.context_lens.tolist() == [5, 20]
    assert batch.block_tables.tolist() == [[4, 2, 0, 0, 0], [7, 1, 9, 3, 5]]
    assert batch.max_query_len == 5
    with pytest.raises(ValueError, match="query lengths"):
        PrefillBatch.build([0, 6], [5], [[1, 2]], CPU)  # 6 new tokens in a context of 5
    with pytest.raises(ValueError, match="N \\+ 1 query starts"):
        PrefillBatch.build([0], [5], [[1, 2]], CPU)
