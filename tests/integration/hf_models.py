"""Tiny random Hugging Face checkpoints and transformers reference outputs, for tests.

Weights are drawn with a wide `initializer_range` so logits are peaked: greedy decoding then
has no near-ties, and token-for-token comparisons with transformers are not flaky. Norm
weights and biases are perturbed too, so a mis-wired norm or bias cannot go unnoticed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import transformers

ARCHES = ("llama", "mistral", "qwen2", "qwen3", "llama3-rope")
VOCAB_SIZE = 300

_BASE: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "initializer_range": 0.3,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_ARCH: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {"rope_theta": 10000.0}),
    "mistral": ("mistral", {"sliding_window": 7}),  # shorter than test prompts on purpose
    "qwen2": ("qwen2", {"rope_theta": 1000000.0}),
    "qwen3": ("qwen3", {"rope_theta": 1000000.0}),
    # original_max_position_embeddings small enough that all three bands of llama3 scaling
    # (kept, divided, blended) occur at head_dim 16.
    "llama3-rope": (
        "llama",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
}


def make_hf_model(
    tmp_path: Path,
    arch: str,
    *,
    sharded: bool = False,
    tie: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Save a tiny random `arch` model (one of `ARCHES`) under `tmp_path`; return its folder."""
    model_type, arch_options = _ARCH[arch]
    options = {**_BASE, **arch_options, "tie_word_embeddings": tie, **config_overrides}
    config = transformers.AutoConfig.for_model(model_type, **options)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.3)
    folder = tmp_path / f"{arch}{'-sharded' if sharded else ''}{'-tied' if tie else ''}"
    model.to(dtype).save_pretrained(folder, max_shard_size="40KB" if sharded else "10GB")
    return folder


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def hf_all_logits(path: Path, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of transformers over the whole sequence."""
    with torch.no_grad():
        out = _load(path)(torch.tensor([ids]))
    return out.logits[0].float()


def hf_last_logits(path: Path, ids: list[int]) -> torch.Tensor:
    """[vocab] float32 logits of transformers for the token after `ids`."""
    return hf_all_logits(path, ids)[-1]


def hf_greedy(
    path: Path, prompt_ids: list[int], max_new_tokens: int, *, ignore_eos: bool = False
) -> list[int]:
    """transformers' greedy continuation of one prompt; stops at the model's EOS unless
    `ignore_eos`.

    NOTE: `ignore_eos` passes `eos_token_id=None`. `min_new_tokens` is no substitute: it
    masks EOS out of the logits, which changes the argmax wherever EOS would win.
    """
    model = _load(path)
    eos: dict[str, Any] = {"eos_token_id": None} if ignore_eos else {}
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=0,
            **eos,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]
