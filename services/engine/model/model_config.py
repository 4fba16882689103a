"""The shape of a Llama-family model, read from a Hugging Face `config.json` or a preset.

`ModelConfig` holds only what the engine computes with; everything else in `config.json`
is ignored. Anything the engine cannot run faithfully (another activation, another RoPE
type, MLP biases, mixed sliding/full attention layers) is refused with a `ConfigError`
rather than silently approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvferry.errors import ConfigError

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
# Used when a config.json has no `architectures` list.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama 3.1 frequency scaling (`rope_type: llama3`), the only scaling supported."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.low_freq_factor <= 0:
            raise ConfigError(f"llama3 rope scaling needs positive factors, got {self}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got {self}"
            )
        if self.original_max_position_embeddings < 1:
            raise ConfigError(f"original_max_position_embeddings must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything the engine needs to know about a model's shape and tokens."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (and on o_proj except for Qwen2)
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # every layer attends to at most this many tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None  # the checkpoint's dtype, e.g. "bfloat16"

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError(
                f"rms_norm_eps and rope_theta must be positive, "
                f"got {self.rms_norm_eps} and {self.rope_theta}"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be positive or None, got {self.sliding_window}")
        for token in (self.bos_token_id, *self.eos_token_ids):
            if token is not None and not 0 <= token < self.vocab_size:
                raise ConfigError(f"special token id {token} is outside vocab ({self.vocab_size})")

    @property
    def o_proj_bias(self) -> bool:
        # NOTE: Qwen2 has biases on q/k/v only; Llama/Qwen3 `attention_bias` covers o_proj too.
        return self.attention_bias and self.architecture != "Qwen2ForCausalLM"

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf_dict(
        cls, d: dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ModelConfig:
        """Read a `config.json` dict (transformers 4.x or 5.x spelling)."""
        return _from_hf_dict(d, generation_config or {})

    @classmethod
    def from_folder(cls, path: Path | str) -> ModelConfig:
        """Read `config.json` (and `generation_config.json` if present) from a model folder."""
        folder = Path(path)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"{folder} has no config.json; is it a Hugging Face model folder?")
        gen_path = folder / "generation_config.json"
        generation = _read_json(gen_path) if gen_path.is_file() else None
        return cls.from_hf_dict(_read_json(config_path), generation)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _from_hf_dict(d: dict[str, Any], gen: dict[str, Any]) -> ModelConfig:
    architecture = _architecture(d)
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {d['hidden_act']!r} is not supported; only 'silu' is")
    if d.get("mlp_bias", False):
        raise ConfigError("mlp_bias=true is not supported")
    try:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        rope_theta, rope_scaling = _rope(d)
        return ModelConfig(
            architecture=architecture,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d["max_position_embeddings"]),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=architecture == "Qwen2ForCausalLM" or bool(d.get("attention_bias")),
            qk_norm=architecture == "Qwen3ForCausalLM",
            sliding_window=_sliding_window(d, architecture),
            bos_token_id=_first_present(d.get("bos_token_id"), gen.get("bos_token_id")),
            eos_token_ids=_token_ids(d.get("eos_token_id"), gen.get("eos_token_id")),
            torch_dtype=d.get("torch_dtype") or d.get("dtype"),
        )
    except KeyError as e:
        raise ConfigError(f"config.json lacks required key {e.args[0]!r}") from e


def _architecture(d: dict[str, Any]) -> str:
    archs = d.get("architectures") or []
    arch = archs[0] if archs else _MODEL_TYPES.get(d.get("model_type", ""), "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"unsupported architecture {arch or d.get('model_type')!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return str(arch)


def _rope(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    # NOTE: transformers 5 writes `rope_parameters` (theta included); 4.x wrote
    # `rope_theta` plus `rope_scaling`, whose type key was once `type`.
    params = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor other than 1.0 is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"rope type {rope_type!r} is not supported; use 'default' or 'llama3'")
    return theta, RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _sliding_window(d: dict[str, Any], architecture: str) -> int | None:
    window = d.get("sliding_window")
    if architecture == "LlamaForCausalLM" or window is None:
        return None
    if architecture == "MistralForCausalLM":
        return int(window)
    # Qwen2/Qwen3: sliding only where `use_sliding_window`, and only on layers past
    # `max_window_layers` (transformers 5 spells this out as `layer_types`).
    layers = int(d["num_hidden_layers"])
    types = d.get("layer_types") or [
        "sliding_attention"
        if d.get("use_sliding_window") and i >= d.get("max_window_layers", layers)
        else "full_attention"
        for i in range(layers)
    ]
    kinds = set(types)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise ConfigError(f"mixed or unknown attention layer types {sorted(kinds)} are not supported")


def _first_present(*values: int | None) -> int | None:
    return next((int(v) for v in values if v is not None), None)


def _token_ids(*values: int | list[int] | None) -> tuple[int, ...]:
    ids: list[int] = []
    for value in values:
        for token in value if isinstance(value, list) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return tuple(ids)
