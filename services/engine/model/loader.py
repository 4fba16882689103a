"""Build a model and fill its weights: from a Hugging Face safetensors checkpoint, or dummy.

Loading is strict: every tensor the model needs must be in the checkpoint with its exact
shape, and every tensor in the checkpoint must be used. Dummy weights depend only on
(seed, tensor name, shape), so every worker of a cluster builds the same model.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kvferry.errors import ConfigError

from ..attention import AttentionBackend
from ..config import LOAD_FORMATS
from .llama import LlamaForCausalLM
from .model_config import ModelConfig
from .presets import PRESETS

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DUMMY_STD = 0.02


def resolve_model(model: str) -> tuple[ModelConfig, Path | None]:
    """A preset name -> (preset, None); a model folder -> (its config, the folder)."""
    if model in PRESETS:
        return PRESETS[model], None
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return ModelConfig.from_folder(folder), folder
    raise ConfigError(
        f"model {model!r} is not a preset ({', '.join(PRESETS)}) nor a folder with config.json"
    )


@torch.no_grad()
def load_model(
    config: ModelConfig,
    folder: Path | None,
    *,
    load_format: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    attention_backend: AttentionBackend = AttentionBackend.TORCH,
) -> LlamaForCausalLM:
    """The model in eval mode with weights in `dtype` on `device`."""
    if load_format not in LOAD_FORMATS:
        raise ConfigError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    # NOTE: built on the meta device and then allocated directly in `dtype`, so no memory or
    # time goes into float32 initial weights that are overwritten. `to_empty` leaves buffers
    # uninitialised too, hence the RoPE tables are recomputed.
    with torch.device("meta"):
        model = LlamaForCausalLM(config, attention_backend)
    model = model.to(dtype).to_empty(device=device)
    model.rotary_emb.reset_cache()
    targets = model.checkpoint_targets()
    if load_format == "dummy":
        _fill_dummy(targets, seed)
    else:
        if folder is None:
            raise ConfigError("load_format 'auto' needs a model folder; use 'dummy' for presets")
        _fill_from_checkpoint(targets, folder, config.tie_word_embeddings)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _fill_dummy(targets: dict[str, torch.Tensor], seed: int) -> None:
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    for name, target in targets.items():
        if name.endswith("norm.weight"):
            target.fill_(1.0)
        elif name.endswith(".bias"):
            target.zero_()
        else:
            target.copy_(dummy_tensor(name, tuple(target.shape), seed, target.device))


def dummy_tensor(
    name: str, shape: tuple[int, ...], seed: int, device: torch.device
) -> torch.Tensor:
    """float32 normal(0, 0.02) noise that depends only on (seed, name, shape, device type)."""
    # NOTE: blake2b, not hash(): Python's string hash is salted per process. The digest's low
    # 32 bits must differ between seeds too, as the CPU generator (mt19937) uses only those.
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    out = torch.empty(shape, dtype=torch.float32, device=device)
    return out.normal_(0.0, _DUMMY_STD, generator=generator)


def _fill_from_checkpoint(targets: dict[str, torch.Tensor], folder: Path, tied: bool) -> None:
    with ExitStack() as stack:
        handles = [
            stack.enter_context(safe_open(f, framework="pt")) for f in _checkpoint_files(folder)
        ]
        located: dict[str, Any] = {}  # tensor name -> the open file holding it
        for handle in handles:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                if not (name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight")):
                    located[name] = handle
        _check_names(located, targets, folder)
        for name, handle in located.items():
            shape = tuple(handle.get_slice(name).get_shape())
            if shape != tuple(targets[name].shape):
                raise ConfigError(
                    f"tensor {name!r} in {folder} has shape {shape}, "
                    f"expected {tuple(targets[name].shape)}"
                )
        for name, handle in located.items():
            targets[name].copy_(handle.get_tensor(name))


def _check_names(located: dict[str, Any], targets: dict[str, torch.Tensor], folder: Path) -> None:
    unexpected = sorted(set(located) - set(targets))
    if unexpected:
        raise ConfigError(
            f"unexpected tensor {unexpected[0]!r} in {folder} ({len(unexpected)} in all); "
            "the checkpoint does not match its config.json"
        )
    missing = [name for name in targets if name not in located]
    if missing:
        raise ConfigError(
            f"checkpoint {folder} lacks tensor {missing[0]!r} ({len(missing)} missing)"
        )


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read the weight_map of {index}: {e}") from e
        files = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ConfigError(f"{index.name} names shards missing from {folder}: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors weights in {folder}; only safetensors is supported")
    return files
