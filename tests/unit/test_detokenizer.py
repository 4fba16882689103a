"""Incremental detokenization: exact streamed text, UTF-8 across tokens, stop strings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers

from kvferry.services.engine.detokenizer import DetokenizerUpdate, IncrementalDetokenizer
from kvferry.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

from .test_tokenizer import CORPUS, write_bpe_folder

MULTILINGUAL = "héllo wörld 日本語 你好，世界 😀🎉👍🏽 naïve café"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder = write_bpe_folder(tmp_path_factory.mktemp("bpe"), config={"bos_token": "<s>"})
    return load_tokenizer(folder)


def stream(
    tok: Tokenizer,
    ids: Sequence[int],
    cuts: Sequence[int],
    *,
    stop: Sequence[str] = (),
    include_stop_str_in_output: bool = False,
    skip_special_tokens: bool = True,
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed `ids` in chunks split at `cuts`; returns the deltas, flush last when no stop."""
    detok = IncrementalDetokenizer(
        tok,
        [1, 2, 3],
        stop=stop,
        include_stop_str_in_output=include_stop_str_in_output,
        skip_special_tokens=skip_special_tokens,
    )
    deltas = []
    for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True):
        update = detok.update(ids[a:b])
        deltas.append(update.text_delta)
        if update.stop_matched is not None:
            return deltas, detok
    deltas.append(detok.flush())
    return deltas, detok


def one_by_one(ids: Sequence[int]) -> list[int]:
    return list(range(1, len(ids)))


# -- exact text ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_valid_text_streams_without_replacement_chars(kind: str, bpe: Tokenizer) -> None:
    tok: Tokenizer = ByteTokenizer() if kind == "byte" else bpe
    ids = tok.encode(MULTILINGUAL, add_special_tokens=False)
    deltas, detok = stream(tok, ids, one_by_one(ids))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == detok.text == MULTILINGUAL
    assert sum(1 for d in deltas if d) < len(ids)  # some characters did span tokens


def test_byte_stream_holds_an_incomplete_character() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer(), [256])
    assert detok.update([0x41, 0xF0, 0x9F]) == DetokenizerUpdate("A", None)
    assert detok.update([0x98]).text_delta == ""
    assert detok.update([0x80, 0x42]).text_delta == "😀B"
    assert detok.update([0xE4]).text_delta == ""
    assert detok.flush() == "\ufffd"  # never completed: as `decode` shows it
    assert detok.text == "A😀B\ufffd"


def _random_ids(rng: random.Random, tok: Tokenizer, n: int) -> list[int]:
    """Ids mixing real text, arbitrary tokens (broken UTF-8 included), specials, unknowns."""
    text_ids = tok.encode(rng.choice(CORPUS), add_special_tokens=False)
    start = rng.randrange(len(text_ids))
    pool = [*text_ids[start : start + n // 2], tok.vocab_size + 5]
    pool += [rng.randrange(tok.vocab_size) for _ in range(n - len(pool))]
    rng.shuffle(pool)
    return pool


@pytest.mark.parametrize("kind", ["byte", "bpe"])
@pytest.mark.parametrize("skip", [True, False])
def test_random_streams_equal_full_decode_at_every_split(
    kind: str, skip: bool, bpe: Tokenizer
) -> None:
    tok: Tokenizer = ByteTokenizer() if kind == "byte" else bpe
    rng = random.Random(1234)
    for _ in range(40):
        ids = _random_ids(rng, tok, rng.randrange(1, 24))
        want = tok.decode(ids, skip_special_tokens=skip)
        splits = [one_by_one(ids)] + [[k] for k in range(1, len(ids))]
        splits.append(sorted(rng.sample(range(1, len(ids)), len(ids) // 3)))
        for cuts in splits:
            deltas, detok = stream(tok, ids, cuts, skip_special_tokens=skip)
            assert "".join(deltas) == detok.text == want, (ids, cuts)


def test_context_dependent_decoder_keeps_spaces(tmp_path: Path) -> None:
    """A SentencePiece-style decoder drops the space of a window's first token; the left
    context keeps it for every token but the stream's first, as a full decode does."""
    backend = HFBackend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    ids = tok.encode("the quick brown fox over the lazy dog", add_special_tokens=False)
    want = tok.decode(ids)
    assert want == "the quick brown fox over the lazy dog"
    for cuts in [one_by_one(ids), *([k] for k in range(1, len(ids)))]:
        deltas, _ = stream(tok, ids, cuts)
        assert "".join(deltas) == want, cuts


# -- stop strings ----------------------------------------------------------------------------


def test_stop_string_spanning_tokens_is_held_back_then_cut() -> None:
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [256], stop=["world"])
    assert detok.update(tok.encode("Hello, wo", add_special_tokens=False)).text_delta == "Hello, "
    assert detok.update(tok.encode("r", add_special_tokens=False)) == DetokenizerUpdate("", None)
    update = detok.update(tok.encode("ld! more", add_special_tokens=False))
    assert update == DetokenizerUpdate("", "world")
    assert detok.text == "Hello, "
    assert detok.update([0x41]) == DetokenizerUpdate("", "world")  # ignored after the stop
    assert detok.flush() == ""


def test_false_start_of_a_stop_string_is_released() -> None:
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [256], stop=["world"])
    assert detok.update(tok.encode("a wor", add_special_tokens=False)).text_delta == "a "
    assert detok.update(tok.encode("m w", add_special_tokens=False)).text_delta == "worm "
    assert detok.flush() == "w"
    assert detok.text == "a worm w"


@pytest.mark.parametrize(
    ("stops", "include", "want_text", "want_stop"),
    [
        (["world"], True, "Hello, world", "world"),
        (["world", "lo"], False, "Hel", "lo"),
        (["o, w", "Hello"], False, "", "Hello"),
        (["llo, world", "o, "], False, "Hell", "o, "),  # completes first: wins whatever the split
        (["rld", "world"], True, "Hello, world", "world"),  # same end: the longer one
        (["xyz"], False, "Hello, world! 你好", None),
        (["你好"], True, "Hello, world! 你好", "你好"),
        (["好"], False, "Hello, world! 你", "好"),
    ],
)
@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_stop_strings_independent_of_chunking(
    kind: str,
    stops: list[str],
    include: bool,
    want_text: str,
    want_stop: str | None,
    bpe: Tokenizer,
) -> None:
    tok: Tokenizer = ByteTokenizer() if kind == "byte" else bpe
    ids = tok.encode("Hello, world! 你好", add_special_tokens=False)
    for cuts in [one_by_one(ids), *([k] for k in range(1, len(ids))), []]:
        deltas, detok = stream(tok, ids, cuts, stop=stops, include_stop_str_in_output=include)
        assert "".join(deltas) == detok.text == want_text, cuts
        assert detok.stop_matched == want_stop


def test_flush_returns_held_back_text_once() -> None:
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [256], stop=["END"])
    assert detok.update(tok.encode("abc E", add_special_tokens=False)).text_delta == "abc "
    assert detok.update(tok.encode("N", add_special_tokens=False)).text_delta == ""
    assert detok.flush() == "EN"
    assert detok.flush() == ""
    assert detok.text == "abc EN"


@pytest.mark.parametrize("bad", [[""], ["ok", ""], [None], [b"x"], "stop"])
def test_invalid_stop_strings_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="stop"):
        IncrementalDetokenizer(ByteTokenizer(), [], stop=bad)


def test_prompt_is_not_part_of_the_text(tmp_path: Path) -> None:
    tok = load_tokenizer(write_bpe_folder(tmp_path))
    prompt = tok.encode("naïve")
    detok = IncrementalDetokenizer(tok, prompt)
    out = tok.encode(" café", add_special_tokens=False)
    assert detok.update(out).text_delta + detok.flush() == tok.decode(out)
