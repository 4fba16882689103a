"""kvferry: disaggregated prefill/decode LLM serving.

The offline engine API is importable from the top (`from kvferry import LLM,
SamplingParams`). Names are resolved lazily so that importing `kvferry` (e.g. for the
client SDK or the router) never pulls in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "kvferry.services.engine.llm",
    "LLMEngine": "kvferry.services.engine.engine",
    "EngineConfig": "kvferry.services.engine.config",
    "SamplingParams": "kvferry.sampling_params",
    "RequestOutput": "kvferry.services.engine.outputs",
    "FinishReason": "kvferry.finish",
}

__all__ = [
    "LLM",
    "EngineConfig",
    "FinishReason",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
]

if TYPE_CHECKING:
    from kvferry.finish import FinishReason
    from kvferry.sampling_params import SamplingParams
    from kvferry.services.engine.config import EngineConfig
    from kvferry.services.engine.engine import LLMEngine
    from kvferry.services.engine.llm import LLM
    from kvferry.services.engine.outputs import RequestOutput


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvferry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
