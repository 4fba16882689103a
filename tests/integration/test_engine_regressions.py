"""Regressions found in review: each test reproduces a bug that once existed."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from kvferry import LLM, LLMEngine, SamplingParams
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.model_runner import KVExport

CONFIG = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=32)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPT = [256, *range(1, 100)]


def _run(engine: LLMEngine, rid: str, prompt: list[int], params: SamplingParams) -> list[int]:
    engine.add_request(rid, prompt, params)
    tokens: list[int] = []
    for _ in range(200):
        tokens += [t for o in engine.step() for t in o.new_token_ids if o.request_id == rid]
        if not engine.has_unfinished_requests():
            return tokens
    raise AssertionError("did not finish")


def test_a_failed_step_does_not_leave_unwritten_blocks_in_the_prefix_cache() -> None:
    reference = _run(LLMEngine(CONFIG), "ref", PROMPT, GREEDY)
    engine = LLMEngine(CONFIG)
    real = engine.runner.execute

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    engine.runner.execute = interrupted  # type: ignore[method-assign]
    engine.add_request("a", PROMPT, GREEDY)
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    assert engine.abort("a")
    assert engine.stats().cached_blocks == 0
    engine.kv.pool.check_invariants()
    engine.runner.execute = real  # type: ignore[method-assign]
    assert _run(engine, "b", PROMPT, GREEDY) == reference


def test_reservations_awaiting_kv_stall_the_engine_instead_of_killing_it() -> None:
    engine = LLMEngine(replace(CONFIG, num_kv_blocks=8))
    assert engine.admit_remote("remote", [256] * 100, GREEDY) is not None  # 7 blocks
    engine.add_request("local", [257] * 40, GREEDY)  # needs 3: cannot fit now
    assert engine.step() == []
    assert engine.stalled
    assert engine.abort("remote")
    tokens = [t for _ in range(50) for o in engine.step() for t in o.new_token_ids]
    assert len(tokens) == 8 and not engine.stalled
    assert engine.stats().free_blocks == 8


def test_remote_admissions_count_against_max_num_seqs() -> None:
    engine = LLMEngine(replace(CONFIG, max_num_seqs=2))
    assert engine.admit_remote("a", [256] * 5, GREEDY) is not None
    assert engine.admit_remote("b", [256] * 5, GREEDY) is not None
    assert engine.admit_remote("c", [256] * 5, GREEDY) is None
    assert engine.abort("a") and engine.abort("b")
    assert engine.stats().free_blocks == 32


def test_a_tiny_temperature_is_greedy_not_nan() -> None:
    llm = LLM(model="tiny", max_model_len=256)
    greedy = llm.generate([PROMPT], GREEDY)[0].token_ids
    tiny = llm.generate([PROMPT], replace(GREEDY, temperature=1e-45, seed=1))[0].token_ids
    assert tiny == greedy


def test_remote_first_token_keeps_logprobs_aligned() -> None:
    prefill, decode = LLMEngine(CONFIG), LLMEngine(CONFIG)
    params = replace(GREEDY, logprobs=2)
    admission = decode.admit_remote("r", PROMPT, params)
    assert admission is not None

    def sink(layer: int, kv: torch.Tensor) -> None:
        decode.write_remote_kv("r", admission.needed_block_positions, layer, kv[None])

    export = KVExport(admission.needed_block_positions, sink)
    prefill.add_request("r", PROMPT, replace(params, max_tokens=1), kv_export=export)
    (first,) = [o for _ in range(5) for o in prefill.step() if o.finished]
    assert first.logprobs is not None
    outs = [decode.complete_remote("r", first.token_ids[0], first.logprobs[0])]
    outs += [o for _ in range(50) for o in decode.step()]
    last = outs[-1]
    assert last.finished and last.logprobs is not None
    assert [lp.token_id for lp in last.logprobs] == last.token_ids
    assert not any(math.isnan(lp.logprob) for lp in last.logprobs)

    admission2 = decode.admit_remote("s", PROMPT, params)  # no logprob handed over
    assert admission2 is not None
    export2 = KVExport(
        admission2.needed_block_positions,
        lambda layer, kv: decode.write_remote_kv(
            "s", admission2.needed_block_positions, layer, kv[None]
        ),
    )
    prefill.add_request("s", PROMPT, replace(params, max_tokens=1), kv_export=export2)
    (first2,) = [o for _ in range(5) for o in prefill.step() if o.finished]
    out = decode.complete_remote("s", first2.token_ids[0])
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids) == 1
    assert math.isnan(out.logprobs[0].logprob)
    decode.abort("s")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (b"hi", "string or a sequence of token ids"),
        ({"a": 1}, "string or a sequence of token ids"),
        (None, "string or a sequence of token ids"),
        (5, "string or a sequence of token ids"),
        ([1, "a"], "not an integer"),
        ([1, True], "not an integer"),
        ([1, 2.0], "not an integer"),
    ],
)
def test_bad_prompt_types_raise_value_error(prompt: object, message: str) -> None:
    engine = LLMEngine(CONFIG)
    with pytest.raises(ValueError, match=message):
        engine.add_request("x", prompt, GREEDY)  # type: ignore[arg-type]
    assert not engine.has_unfinished_requests()


def test_numpy_ids_are_accepted_and_other_bad_arguments_named() -> None:
    engine = LLMEngine(CONFIG)
    engine.add_request("np", np.array([256, 5, 6], dtype=np.int64), GREEDY)  # type: ignore[arg-type]
    assert engine.abort("np")
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request(5, [1, 2], GREEDY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SamplingParams"):
        engine.add_request("p", [1, 2], {"max_tokens": 3})  # type: ignore[arg-type]
    llm = LLM(model="tiny", max_model_len=256)
    with pytest.raises(ValueError, match="prompt 1: sampling params"):
        llm.generate(["a", "b"], [GREEDY, None])  # type: ignore[list-item]
