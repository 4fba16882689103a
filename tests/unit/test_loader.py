"""ModelConfig parsing, presets, and the strict safetensors / dummy weight loader."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from kvferry.errors import ConfigError
from kvferry.services.engine.model import (
    PRESETS,
    ModelConfig,
    RopeScaling,
    get_preset,
    load_model,
    resolve_model,
)
from tests.integration.hf_models import make_hf_model

CPU = torch.device("cpu")
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"

LLAMA_31_8B: dict[str, Any] = {  # transformers 4.x spelling, as published on the Hub
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def load(folder: Path, **kw: Any) -> torch.nn.Module:
    config = ModelConfig.from_folder(folder)
    return load_model(config, folder, load_format="auto", dtype=torch.float32, device=CPU, **kw)


def edit_weights(folder: Path, edit: Any) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# -- ModelConfig ---------------------------------------------------------------------------


def test_config_from_transformers_4_dict() -> None:
    config = ModelConfig.from_hf_dict(LLAMA_31_8B, {"eos_token_id": [128009, 128001, 7]})

    assert config.head_dim == 128
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
    assert config.eos_token_ids == (128001, 128008, 128009, 7)
    assert config.torch_dtype == "bfloat16"
    assert config.sliding_window is None
    assert replace(config, eos_token_ids=(128001, 128008, 128009)) == PRESETS["llama-3-8b"]


def test_config_old_rope_scaling_type_key() -> None:
    d = {**LLAMA_31_8B, "rope_scaling": {**LLAMA_31_8B["rope_scaling"], "type": "llama3"}}
    del d["rope_scaling"]["rope_type"]
    assert ModelConfig.from_hf_dict(d).rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_config_from_transformers_5_folder(tmp_path: Path) -> None:
    config = ModelConfig.from_folder(make_hf_model(tmp_path, "qwen3", sharded=True))

    assert config.architecture == "Qwen3ForCausalLM"
    assert (config.head_dim, config.rope_theta, config.rope_scaling) == (16, 1e6, None)
    assert config.qk_norm and not config.attention_bias
    assert (config.bos_token_id, config.eos_token_ids) == (1, (2,))
    assert config.torch_dtype == "float32"


def test_config_arch_flags(tmp_path: Path) -> None:
    qwen2 = ModelConfig.from_folder(make_hf_model(tmp_path, "qwen2"))
    mistral = ModelConfig.from_folder(make_hf_model(tmp_path, "mistral"))
    assert qwen2.attention_bias and not qwen2.o_proj_bias and qwen2.sliding_window is None
    assert mistral.sliding_window == 7


def test_config_qwen2_mixed_sliding_layers_refused() -> None:
    d = {
        **LLAMA_31_8B,
        "architectures": ["Qwen2ForCausalLM"],
        "sliding_window": 4096,
        "use_sliding_window": True,
        "max_window_layers": 16,
    }
    with pytest.raises(ConfigError, match="sliding_attention"):
        ModelConfig.from_hf_dict(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ],
)
def test_config_refuses(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf_dict({**LLAMA_31_8B, **change})


def test_kv_bytes_per_token() -> None:
    assert PRESETS["llama-3-8b"].kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2


def test_presets() -> None:
    tiny = get_preset("tiny")
    assert (tiny.vocab_size, tiny.bos_token_id, tiny.eos_token_ids) == (320, 256, (257,))
    assert get_preset("qwen3-8b").qk_norm
    with pytest.raises(ConfigError, match="tiny"):
        get_preset("nope")


def test_resolve_model(tmp_path: Path) -> None:
    assert resolve_model("tiny") == (PRESETS["tiny"], None)
    folder = make_hf_model(tmp_path, "llama")
    assert resolve_model(str(folder)) == (ModelConfig.from_folder(folder), folder)
    with pytest.raises(ConfigError, match="not a preset"):
        resolve_model(str(tmp_path / "missing"))


# -- checkpoint errors -----------------------------------------------------------------------


def test_missing_tensor(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    edit_weights(folder, lambda t: t.pop(Q_PROJ))
    with pytest.raises(ConfigError, match=Q_PROJ):
        load(folder)


def test_misshaped_tensor(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    edit_weights(folder, lambda t: t.update({Q_PROJ: torch.zeros(64, 32)}))
    with pytest.raises(ConfigError, match=rf"{Q_PROJ}.*\(64, 32\).*\(64, 64\)"):
        load(folder)


def test_unexpected_tensor(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    edit_weights(folder, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)}))
    with pytest.raises(ConfigError, match=re.escape("model.layers.0.mlp.extra.weight")):
        load(folder)


def test_no_safetensors(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=re.escape("no *.safetensors")):
        load(folder)


def test_unknown_architecture_and_rope_in_folder(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    edit_config(folder, architectures=["FalconForCausalLM"])
    with pytest.raises(ConfigError, match="FalconForCausalLM"):
        resolve_model(str(folder))
    edit_config(
        folder, architectures=["LlamaForCausalLM"], rope_parameters={"rope_type": "dynamic"}
    )
    with pytest.raises(ConfigError, match="dynamic"):
        resolve_model(str(folder))


def test_tied_checkpoint_with_or_without_lm_head(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama", tie=True)
    model = load(folder)
    assert model.lm_head is None
    edit_weights(
        folder, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()})
    )
    load(folder)  # present but tied: ignored


def test_inv_freq_ignored(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path, "llama")
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    edit_weights(folder, lambda t: t.update({name: torch.ones(8)}))
    load(folder)


# -- dummy weights ---------------------------------------------------------------------------


def dummy(seed: int, name: str = "tiny") -> dict[str, torch.Tensor]:
    config = get_preset(name)
    model = load_model(
        config, None, load_format="dummy", dtype=torch.bfloat16, device=CPU, seed=seed
    )
    return model.state_dict()


def test_dummy_weights_are_seeded() -> None:
    first, again, other = dummy(0), dummy(0), dummy(1)

    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(
        first["layers.0.self_attn.qkv_proj.weight"], other["layers.0.self_attn.qkv_proj.weight"]
    )
    assert first["layers.0.self_attn.qkv_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(first["norm.weight"], torch.ones(256, dtype=torch.bfloat16))
    std = first["embed_tokens.weight"].float().std().item()
    assert 0.015 < std < 0.025


def test_dummy_weights_same_in_another_process() -> None:
    code = (
        "import torch; from kvferry.services.engine.model import get_preset, load_model\n"
        "m = load_model(get_preset('tiny'), None, load_format='dummy', dtype=torch.float32,"
        " device=torch.device('cpu'), seed=3)\n"
        "print(repr(m.state_dict()['layers.1.mlp.gate_up_proj.weight'].double().sum().item()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    config = get_preset("tiny")
    here = load_model(config, None, load_format="dummy", dtype=torch.float32, device=CPU, seed=3)
    expected = here.state_dict()["layers.1.mlp.gate_up_proj.weight"].double().sum().item()
    assert float(out.stdout) == expected


def test_dummy_model_runs_eval_without_grad() -> None:
    model = load_model(
        get_preset("tiny"), None, load_format="dummy", dtype=torch.float32, device=CPU
    )
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
