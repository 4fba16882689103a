"""Text <-> token ids: a byte-level tokenizer for the presets and a wrapper for `tokenizer.json`.

`load_tokenizer` picks one. Both satisfy the `Tokenizer` protocol that the engine and the
incremental detokenizer use; nothing else of the `tokenizers` library leaks out of this file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer as _HFBackend
from tokenizers import processors

from kvferry.errors import ConfigError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows, added tokens included (the model's embedding may be larger)."""
        ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`; `add_special_tokens` adds what the model expects (e.g. BOS)."""
        ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; unknown ids decode to nothing, invalid UTF-8 to U+FFFD."""
        ...

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (BOS, EOS, chat markers) that `skip_special_tokens` drops."""
        ...


class ByteTokenizer:
    """The `tiny` presets' tokenizer: ids 0-255 are UTF-8 bytes, then BOS and EOS.

    Special tokens have no text form, so `skip_special_tokens` changes nothing; ids at or
    past `vocab_size` (the model's embedding is larger) also decode to nothing.
    """

    BOS_ID = 256
    EOS_ID = 257

    def __init__(self) -> None:
        self.vocab_size = 258
        self.bos_token_id: int | None = self.BOS_ID
        self.eos_token_ids: tuple[int, ...] = (self.EOS_ID,)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.BOS_ID, *ids] if add_special_tokens else ids

    def to_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids`, special and unknown ids dropped."""
        return bytes(i for i in ids if 0 <= i < 256)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        return token_id in (self.BOS_ID, self.EOS_ID)


class HFTokenizer:
    """A Hugging Face fast tokenizer (`tokenizer.json`) plus `tokenizer_config.json`.

    `encode` of a plain string gives the ids that transformers' `PreTrainedTokenizerFast`
    gives when loaded with the same two files: `add_bos_token`/`add_eos_token` in the
    config (or a `tokenizer.json` without a post-processor) replace the post-processor with
    `[BOS] text [EOS]` as configured; otherwise the file's own post-processor applies.
    """

    def __init__(self, backend: _HFBackend, config: dict[str, Any]) -> None:
        self._tok = backend
        bos = _special_token(backend, config.get("bos_token"))
        eos = _special_token(backend, config.get("eos_token"))
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id: int | None = None if bos is None else bos[1]
        self.eos_token_ids: tuple[int, ...] = () if eos is None else (eos[1],)
        self._special = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        explicit = "add_bos_token" in config or "add_eos_token" in config
        if explicit or backend.post_processor is None:
            # NOTE: a configured BOS/EOS that is not in the vocabulary is not added.
            backend.post_processor = _template(
                bos if config.get("add_bos_token") else None,
                eos if config.get("add_eos_token") else None,
            )

    @classmethod
    def from_folder(cls, folder: Path) -> HFTokenizer:
        path = folder / TOKENIZER_FILE
        try:
            backend = _HFBackend.from_file(str(path))
        except Exception as e:  # the tokenizers library raises untyped errors
            raise ConfigError(f"cannot load {path}: {e}") from e
        config: dict[str, Any] = {}
        config_path = folder / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot read {config_path}: {e}") from e
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config_path} must hold a JSON object")
            config = loaded
        return cls(backend, config)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special


def _special_token(backend: _HFBackend, entry: object) -> tuple[str, int] | None:
    """(text, id) of a `tokenizer_config.json` token entry: a string or `{"content": ...}`."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    if not isinstance(entry, str):
        return None
    token_id: int | None = backend.token_to_id(entry)
    return None if token_id is None else (entry, token_id)


def _template(
    bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> processors.TemplateProcessing:
    """`[BOS] $A [EOS]`, each special only when given."""
    single = [f"{bos[0]}:0"] if bos else []
    single.append("$A:0")
    if eos:
        single.append(f"{eos[0]}:0")
    special = [t for t in (bos, eos) if t is not None]
    return processors.TemplateProcessing(single=" ".join(single), special_tokens=special)


def load_tokenizer(folder: Path | None, *, byte_level: bool = False) -> Tokenizer:
    """The byte-level tokenizer when asked (presets), else `folder/tokenizer.json`."""
    if byte_level:
        return ByteTokenizer()
    if folder is None:
        raise ConfigError("a model folder is needed to load a tokenizer (or use a preset)")
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: kvferry needs the fast tokenizer file {TOKENIZER_FILE}"
            " (tokenizer.model / vocab.json alone are not supported); save one with"
            " transformers' AutoTokenizer.save_pretrained"
        )
    return HFTokenizer.from_folder(folder)
