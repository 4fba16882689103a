"""Tokenizers: the byte-level preset tokenizer and `tokenizer.json` folders."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from kvferry.errors import ConfigError
from kvferry.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

SPECIALS = ["<s>", "</s>", "<|im_end|>"]
CORPUS = [
    "Hello world, hello there!",
    "héllo wörld — naïve café, Ünïcödé",
    "日本語のテキストです。你好，世界！",
    "emoji 😀🎉👍🏽 and more 😀😀",
    "the quick brown fox jumps over the lazy dog",
]
SAMPLES = ["Hello world", "naïve café 😀", "你好，世界", "  spaced  out ", "<s> literal </s>"]


@cache
def _trained_bpe_json() -> str:
    tok = HFBackend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return str(tok.to_str())


def write_bpe_folder(
    folder: Path, *, bos_template: bool = True, config: dict[str, Any] | None = None
) -> Path:
    """A byte-level BPE `tokenizer.json` (BOS added by its post-processor when
    `bos_template`) and, when given, a `tokenizer_config.json`."""
    tok = HFBackend.from_str(_trained_bpe_json())
    if bos_template:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", special_tokens=[("<s>", bos)]
        )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


# -- byte-level ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["plain ASCII", "日本語と中文", "emoji 😀🎉👍🏽", ""])
def test_byte_tokenizer_roundtrip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == ByteTokenizer.BOS_ID
    assert ids[1:] == list(text.encode("utf-8"))
    assert tok.encode(text, add_special_tokens=False) == ids[1:]
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials_unknown_and_invalid_bytes() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_ids) == (258, 256, (257,))
    assert tok.is_special(256) and tok.is_special(257) and not tok.is_special(65)
    # Specials and ids past the vocabulary have no text; bytes on either side join up.
    assert tok.decode([256, 0xC3, 300, 0xA9, 257], skip_special_tokens=False) == "é"
    assert tok.decode([0x41, 0xFF, 0xE4, 0xBD]) == "A\ufffd\ufffd"


def test_load_tokenizer_byte_level() -> None:
    assert isinstance(load_tokenizer(None, byte_level=True), ByteTokenizer)


# -- tokenizer.json ------------------------------------------------------------------------


def test_folder_without_tokenizer_json_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"not used")
    with pytest.raises(ConfigError, match=r"tokenizer\.json.*missing.*fast tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="model folder"):
        load_tokenizer(None)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot load"):
        load_tokenizer(tmp_path)
    write_bpe_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        load_tokenizer(tmp_path)


def test_hf_tokenizer_reads_special_tokens(tmp_path: Path) -> None:
    config = {"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>"}
    tok = load_tokenizer(write_bpe_folder(tmp_path, config=config))
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == len(HFBackend.from_str(_trained_bpe_json()).get_vocab())
    assert tok.bos_token_id == 0
    assert tok.eos_token_ids == (1,)
    assert [tok.is_special(i) for i in (0, 1, 2, 3)] == [True, True, True, False]
    ids = tok.encode("naïve 😀")
    assert ids[0] == 0
    assert tok.decode([*ids, 2, 1]) == "naïve 😀"
    assert tok.decode([*ids, 2], skip_special_tokens=False) == "<s>naïve 😀<|im_end|>"
    assert tok.decode([ids[1], 10_000]) == tok.decode([ids[1]])  # unknown ids: no text


def test_hf_tokenizer_without_config(tmp_path: Path) -> None:
    tok = load_tokenizer(write_bpe_folder(tmp_path))
    assert tok.bos_token_id is None and tok.eos_token_ids == ()
    assert tok.encode("Hello")[0] == 0  # the file's own post-processor adds <s>


# case -> (tokenizer.json adds <s> itself, tokenizer_config.json, expected specials around "Hi")
CONFIGS: dict[str, tuple[bool, dict[str, Any] | None, tuple[list[int], list[int]]]] = {
    "file-template-no-config": (True, None, ([0], [])),
    "file-template-plain-config": (True, {"bos_token": "<s>", "eos_token": "</s>"}, ([0], [])),
    "config-disables-bos": (True, {"bos_token": "<s>", "add_bos_token": False}, ([], [])),
    "config-adds-bos-and-eos": (
        False,
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": True},
        ([0], [1]),
    ),
    "no-post-processor": (False, {"bos_token": "<s>", "eos_token": "<|im_end|>"}, ([], [])),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_hf_encode_matches_transformers(tmp_path: Path, case: str) -> None:
    transformers = pytest.importorskip("transformers")
    bos_template, config, (head, tail) = CONFIGS[case]
    folder = write_bpe_folder(tmp_path, bos_template=bos_template, config=config)
    ours = load_tokenizer(folder)
    plain = ours.encode("Hi", add_special_tokens=False)
    assert ours.encode("Hi") == head + plain + tail
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), **(config or {})
    )
    for text in SAMPLES:
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == theirs.encode(
                text, add_special_tokens=add
            ), (text, add)
        ids = theirs.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            )
