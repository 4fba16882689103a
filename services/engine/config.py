"""The engine's configuration: one frozen dataclass, validated on construction.

Every default is written here once; the CLI and (later) worker flags map onto these fields.
Values derived at run time (the number of KV blocks that fit, the resolved dtype) live in
`CacheLayout`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16", "float16")
LOAD_FORMATS = ("auto", "dummy")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION_BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = "tiny"
    """A preset name (`tiny`, `llama-3-8b`, ...) or a Hugging Face model folder."""
    tokenizer: str | None = None
    """A folder with tokenizer.json, or `byte` for the built-in byte-level tokenizer.
    Default: the model folder's own (byte-level for presets)."""
    dtype: str = "auto"
    """`auto`: the checkpoint's dtype on CUDA, float32 on CPU (bf16 matmuls are slow there)."""
    load_format: str = "auto"
    """`dummy`: seeded random weights of the model's shape (benchmarks, shape-only presets)."""
    seed: int = 0
    """Seed for dummy weights; every worker of a cluster must use the same one."""
    device: str = "auto"
    block_size: int = 16
    """Tokens per KV block; 16 balances prefix-cache granularity against table size."""
    num_kv_blocks: int | None = None
    """Exact KV pool size; overrides the memory budget (tests, reproducible benchmarks)."""
    kv_cache_bytes: int = 512 * 1024**2
    """KV budget on CPU. Host memory is shared with everything else, so it is explicit."""
    gpu_memory_utilization: float = 0.9
    """Share of free device memory (after weights and a profile step) for the KV pool."""
    max_model_len: int | None = None
    """Longest prompt + output; defaults to the model's max_position_embeddings."""
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    attention_backend: str = "auto"
    """`auto`: `triton` (the Triton kernels) on CUDA, `torch` (the references) on CPU. Resolved
    once at engine start-up; `triton` on CPU runs only under TRITON_INTERPRET=1 (tests)."""
    cuda_graphs: bool = True
    """Replay decode-only steps as CUDA graphs captured per batch-size bucket (1, 2, 4, ...,
    max_num_seqs): one launch instead of hundreds per step. Only with the triton backend on
    CUDA (the torch references sync with the host); ignored elsewhere."""

    def __post_init__(self) -> None:
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("load_format", self.load_format, LOAD_FORMATS)
        _one_of("device", self.device, DEVICES)
        _one_of("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if not self.model:
            raise ValueError("model must name a preset (e.g. 'tiny') or a model folder")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if self.kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be positive, got {self.kv_cache_bytes}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}"
            )


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
