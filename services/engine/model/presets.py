"""Built-in model shapes: `tiny` (the local default) and shape-only presets for benchmarks.

Presets have no checkpoint; the loader gives them seeded dummy weights. The large ones copy
the shapes of the public configs so that memory and speed measurements are realistic.
"""

from __future__ import annotations

from kvferry.errors import ConfigError
from kvferry.tokenizer import ByteTokenizer

from .model_config import ModelConfig, RopeScaling

# Byte-level tokenizer ids shared by `tiny` and `bench-cpu`: 0-255 bytes, then BOS and EOS.
BYTE_VOCAB_SIZE = 320
BYTE_BOS_ID = ByteTokenizer.BOS_ID
BYTE_EOS_ID = ByteTokenizer.EOS_ID

_LLAMA_3_ROPE = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_LLAMA_3_EOS = (128001, 128008, 128009)


def _byte_llama(hidden: int, intermediate: int) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=hidden // 8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        bos_token_id=BYTE_BOS_ID,
        eos_token_ids=(BYTE_EOS_ID,),
    )


def _llama_3(hidden: int, intermediate: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_LLAMA_3_ROPE,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_ids=_LLAMA_3_EOS,
        torch_dtype="bfloat16",
    )


PRESETS: dict[str, ModelConfig] = {
    "tiny": _byte_llama(hidden=256, intermediate=768),
    "bench-cpu": _byte_llama(hidden=512, intermediate=1536),
    "llama-3-8b": _llama_3(hidden=4096, intermediate=14336, layers=32, heads=32),
    "llama-3-70b": _llama_3(hidden=8192, intermediate=28672, layers=80, heads=64),
    "qwen3-8b": ModelConfig(
        architecture="Qwen3ForCausalLM",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        qk_norm=True,
        bos_token_id=151643,
        eos_token_ids=(151645, 151643),
        torch_dtype="bfloat16",
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; `ConfigError` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None
