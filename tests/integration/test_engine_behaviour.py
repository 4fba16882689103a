"""Engine behaviour on the built-in tiny preset: sampling, stops, aborts, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvferry import LLM, FinishReason, LLMEngine, SamplingParams
from kvferry.services.engine.config import EngineConfig


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny", max_model_len=256, num_kv_blocks=64)


def _assert_all_free(llm: LLM) -> None:
    stats = llm.engine.stats()
    assert stats.free_blocks == stats.total_blocks
    assert not llm.engine.has_unfinished_requests()
    llm.engine.kv.pool.check_invariants()


def test_outputs_in_input_order_with_text_and_finish_reason(llm: LLM) -> None:
    prompts = ["a", "hello world", "Ünïcødé ✓ 你好"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    singles = [
        llm.generate([p], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
        for p in prompts
    ]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]
    for out in outs:
        assert len(out.token_ids) == 5
        assert out.finish_reason is FinishReason.LENGTH
        assert out.text == llm.engine.tokenizer.decode(out.token_ids)
    _assert_all_free(llm)


def test_seeded_sampling_is_independent_of_batch(llm: LLM) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = llm.generate(["seeded prompt"], seeded)[0].token_ids
    noisy = SamplingParams(max_tokens=20, temperature=1.2, ignore_eos=True)
    batch = llm.generate(
        ["other one", "seeded prompt", "and another, longer prompt"], [noisy, seeded, noisy]
    )
    assert batch[1].token_ids == alone
    other_seed = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True)
    assert llm.generate(["seeded prompt"], other_seed)[0].token_ids != alone
    _assert_all_free(llm)


def test_seeded_sampling_survives_preemption() -> None:
    params = SamplingParams(max_tokens=24, temperature=0.8, top_k=50, seed=7, ignore_eos=True)
    roomy = LLM(model="tiny", max_model_len=128, num_kv_blocks=64)
    tight = LLM(model="tiny", max_model_len=128, num_kv_blocks=6, block_size=16)
    prompts = ["x" * 40, "y" * 40, "z" * 40]
    a = [o.token_ids for o in roomy.generate(prompts, params)]
    b = [o.token_ids for o in tight.generate(prompts, params)]
    assert a == b
    _assert_all_free(tight)


def test_stop_string_truncates_text_and_stops(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = llm.generate(["stop here"], greedy)[0]
    text = full.text
    # A character that first appears well before the end, so stopping there saves tokens.
    stop = next(c for c in text[: len(text) // 2] if c != "\ufffd")
    out = llm.generate(["stop here"], replace(greedy, stop=(stop,)))[0]
    assert out.finish_reason is FinishReason.STOP
    assert out.text == text[: text.index(stop)]
    assert len(out.token_ids) < len(full.token_ids)
    kept = llm.generate(
        ["stop here"],
        replace(greedy, stop=(stop,), include_stop_str_in_output=True),
    )[0]
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_stop_token_id_and_eos(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = llm.generate(["stop ids"], greedy)[0].token_ids
    target = full[5]
    first = full.index(target)
    out = llm.generate(["stop ids"], replace(greedy, stop_token_ids=(target,)))
    assert out[0].token_ids == full[: first + 1]
    assert out[0].finish_reason is FinishReason.STOP


def test_logprobs(llm: LLM) -> None:
    out = llm.generate(["logprobs"], SamplingParams(max_tokens=4, temperature=0.0, logprobs=3))[0]
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    for tok, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == tok
        assert len(lp.top) == 3
        assert lp.top[0][0] == tok  # greedy picks the most likely token
        assert lp.logprob == pytest.approx(lp.top[0][1])
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]


def test_abort_frees_blocks_and_others_continue(llm: LLM) -> None:
    engine = llm.engine
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = llm.generate(["keep going"], greedy)[0].token_ids
    engine.add_request("victim", "p" * 100, SamplingParams(max_tokens=50))
    engine.add_request("keeper", "keep going", greedy)
    tokens = [t for out in engine.step() for t in out.new_token_ids if out.request_id == "keeper"]
    assert engine.stats().used_blocks > 0
    assert engine.abort("victim")
    assert not engine.abort("victim")
    for _ in range(50):
        for out in engine.step():
            assert out.request_id == "keeper"
            tokens += out.new_token_ids
        if not engine.has_unfinished_requests():
            break
    assert tokens == expected
    _assert_all_free(llm)


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", SamplingParams(), "empty"),
        ([], SamplingParams(), "empty"),
        ([1, 2, 99999], SamplingParams(), "vocabulary"),
        ("x" * 250, SamplingParams(max_tokens=10), "max_model_len"),
    ],
)
def test_bad_prompt_rejected_without_disturbing_others(
    llm: LLM, prompt: str | list[int], params: SamplingParams, message: str
) -> None:
    engine = llm.engine
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    expected = llm.generate(["good"], greedy)[0].token_ids
    engine.add_request("good", "good", greedy)
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", prompt, params)
    with pytest.raises(ValueError, match="already"):
        engine.add_request("good", "good", greedy)
    tokens: list[int] = []
    for _ in range(20):
        for out in engine.step():
            tokens += out.new_token_ids
    assert tokens == expected
    _assert_all_free(llm)


def test_generate_names_the_bad_prompt_and_runs_nothing(llm: LLM) -> None:
    with pytest.raises(ValueError, match="prompt 1: prompt is empty"):
        llm.generate(["fine", ""], SamplingParams(max_tokens=2))
    _assert_all_free(llm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_params(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "no-such-model"}, "preset"),
        ({"block_size": 12}, "power of two"),
        ({"dtype": "float64"}, "dtype"),
        ({"max_model_len": 10**6}, "max_position_embeddings"),
    ],
)
def test_bad_engine_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMEngine(EngineConfig(**kwargs))  # type: ignore[arg-type]


def test_kv_events_follow_the_prefix_cache() -> None:
    engine = LLMEngine(EngineConfig(model="tiny", num_kv_blocks=8, max_model_len=128))
    engine.add_request("a", list(range(40)), SamplingParams(max_tokens=1))
    while engine.has_unfinished_requests():
        engine.step()
    stored = [h for e in engine.take_kv_events() for h in getattr(e, "block_hashes", ())]
    assert len(stored) == 2  # 40 prompt tokens = 2 full blocks of 16
    assert engine.stats().cached_blocks == 2
    assert engine.take_kv_events() == []


def test_stats_count_prompt_tokens_not_yet_computed() -> None:
    engine = LLMEngine(
        EngineConfig(model="tiny", num_kv_blocks=32, max_model_len=128, max_num_batched_tokens=16)
    )
    params = SamplingParams(max_tokens=2, temperature=0.0)
    engine.add_request("a", [256, *range(39)], params)  # 40 prompt tokens
    engine.add_request("b", [256, *range(9)], params)  # 10
    assert engine.stats().prefill_tokens_waiting == 50
    engine.step()  # one chunk of 16 tokens
    assert engine.stats().prefill_tokens_waiting == 34
    while engine.has_work():
        engine.step()
    assert engine.stats().prefill_tokens_waiting == 0
