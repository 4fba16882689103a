"""kvferry: disaggregated prefill/decode LLM serving.

The offline engine API and the client SDK are importable from the top (`from kvferry
import LLM, SamplingParams`, `from kvferry import Client`). Names are resolved lazily so
that importing `kvferry` (e.g. for the client SDK or the router) never pulls in torch.
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
    "Client": "kvferry.client",
    "AsyncClient": "kvferry.client",
    "GenerationChunk": "kvferry.client_types",
    "Completion": "kvferry.client_types",
    "Usage": "kvferry.client_types",
    "Timing": "kvferry.client_types",
    "TokenLogprob": "kvferry.client_types",
    "TopLogprob": "kvferry.client_types",
    "ModelInfo": "kvferry.client_types",
}

__all__ = [
    "LLM",
    "AsyncClient",
    "Client",
    "Completion",
    "EngineConfig",
    "FinishReason",
    "GenerationChunk",
    "LLMEngine",
    "ModelInfo",
    "RequestOutput",
    "SamplingParams",
    "Timing",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]

if TYPE_CHECKING:
    from kvferry.client import AsyncClient, Client
    from kvferry.client_types import (
        Completion,
        GenerationChunk,
        ModelInfo,
        Timing,
        TokenLogprob,
        TopLogprob,
        Usage,
    )
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
