"""The offline API, familiar to vLLM users.

from kvferry import LLM, SamplingParams
llm = LLM(model="tiny")
outs = llm.generate(["Hello", [256, 72, 105]], SamplingParams(max_tokens=32, temperature=0.0))
outs[0].token_ids, outs[0].text, outs[0].finish_reason
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

from kvferry.sampling_params import SamplingParams

from .config import EngineConfig
from .engine import LLMEngine
from .outputs import RequestOutput

Prompt = str | Sequence[int]


class LLM:
    def __init__(self, model: str = "tiny", **engine_args: Any) -> None:
        self._init(EngineConfig(model=model, **engine_args))

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm._init(config)
        return llm

    def _init(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)
        self._batches = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion together; outputs come back in input order.

        Every prompt is validated before any runs: a bad one raises ValueError naming its
        index, and nothing is left in the engine.
        """
        batch = _as_batch(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(batch)
        else:
            params = list(sampling_params)
            if len(params) != len(batch):
                raise ValueError(
                    f"got {len(params)} sampling params for {len(batch)} prompts;"
                    " pass one, or one per prompt"
                )
        encoded: list[list[int]] = []
        for i, (prompt, p) in enumerate(zip(batch, params, strict=True)):
            try:
                encoded.append(self.engine.encode_prompt(prompt, p))
            except ValueError as err:
                raise ValueError(f"prompt {i}: {err}") from err

        base = f"llm-{next(self._batches)}"
        ids = [f"{base}-{i}" for i in range(len(batch))]
        for rid, prompt_ids, p in zip(ids, encoded, params, strict=True):
            self.engine.add_request(rid, prompt_ids, p)
        final: dict[str, RequestOutput] = {}
        try:
            while len(final) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        final[out.request_id] = out
        finally:
            for rid in ids:
                if rid not in final:
                    self.engine.abort(rid)
        return [final[rid] for rid in ids]


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [cast(list[int], items)]  # one prompt given as token ids
    return cast(list[Prompt], items)
