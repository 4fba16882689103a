"""The Llama-family model, its configuration, presets and weight loading."""

from .llama import LlamaForCausalLM
from .loader import dummy_tensor, load_model, resolve_model
from .model_config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from .presets import PRESETS, get_preset

__all__ = [
    "PRESETS",
    "SUPPORTED_ARCHITECTURES",
    "LlamaForCausalLM",
    "ModelConfig",
    "RopeScaling",
    "dummy_tensor",
    "get_preset",
    "load_model",
    "resolve_model",
]
