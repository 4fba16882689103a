"""Start-up decisions of the engine: device, dtype, context length, tokenizer, attention
backend and CUDA graphs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from kvferry.errors import ConfigError
from kvferry.tokenizer import Tokenizer, load_tokenizer

from .attention import AttentionBackend
from .config import EngineConfig
from .model.model_config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_tokenizer(name: str | None, folder: Path | None, model: ModelConfig) -> Tokenizer:
    if name == "byte" or (name is None and folder is None):
        tokenizer = load_tokenizer(None, byte_level=True)
    else:
        tokenizer = load_tokenizer(Path(name) if name else folder)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only"
            f" {model.vocab_size}; pass the model's own tokenizer"
        )
    return tokenizer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is visible; use 'cpu'")
    return torch.device(name)


def resolve_dtype(name: str, model: ModelConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # NOTE: CPU bf16/fp16 matmuls are slow and less exact
    if model.torch_dtype in ("bfloat16", "float16"):
        return _DTYPES[model.torch_dtype]
    return torch.bfloat16


def resolve_max_model_len(config: EngineConfig, model: ModelConfig) -> int:
    limit = model.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ConfigError(
            f"max_model_len {config.max_model_len} exceeds the model's"
            f" max_position_embeddings {limit}"
        )
    return config.max_model_len or limit


def resolve_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """`auto` -> the Triton kernels on CUDA, the torch references elsewhere."""
    if name == "auto":
        return AttentionBackend.TRITON if device.type == "cuda" else AttentionBackend.TORCH
    backend = AttentionBackend(name)
    if backend is AttentionBackend.TRITON:
        if importlib.util.find_spec("triton") is None:
            raise ConfigError(
                "attention_backend 'triton' needs the triton package (CUDA builds of torch"
                " ship it); install it or use 'torch'"
            )
        # NOTE: read here, once, only to reject a choice that cannot run; the kernels
        # themselves never look at the environment.
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                "attention_backend 'triton' needs a CUDA device (on CPU it runs only under"
                " TRITON_INTERPRET=1, for tests); use 'torch' or 'auto'"
            )
    return backend


def resolve_cuda_graphs(
    config: EngineConfig, device: torch.device, backend: AttentionBackend
) -> bool:
    """Decode steps run as CUDA graphs only on CUDA with the Triton kernels: the torch
    references read context lengths back to the host, which a graph cannot replay."""
    return config.cuda_graphs and device.type == "cuda" and backend is AttentionBackend.TRITON
