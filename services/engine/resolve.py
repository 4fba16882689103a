"""Start-up decisions of the engine: device, dtype, context length, tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from kvferry.errors import ConfigError
from kvferry.tokenizer import Tokenizer, load_tokenizer

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
