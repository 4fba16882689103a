"""Streaming token ids -> text, with stop strings.

The text a request streams is, concatenated, exactly `tokenizer.decode(output_ids)` (cut at
a stop string when one matched): a UTF-8 character split across tokens is emitted once the
token that completes it arrives, never as U+FFFD first. Each `update` costs O(window), not
O(output so far):

- `ByteTokenizer`: an incremental UTF-8 decoder over the raw bytes (exact by construction).
- any other tokenizer: decode a short window of recent ids with the previous chunk as left
  context and emit the new suffix, holding back while it ends in U+FFFD.

Stop strings are searched only in text not yet emitted: text that could still be the start
of a stop string is held back until it is resolved, so no emitted text is ever retracted.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvferry.tokenizer import ByteTokenizer, Tokenizer

_REPLACEMENT = "\ufffd"


@dataclass(frozen=True, slots=True)
class DetokenizerUpdate:
    """New text for one `update`, and the stop string that ended the output, if any."""

    text_delta: str
    stop_matched: str | None = None


class _TextStream(Protocol):
    def push(self, ids: Sequence[int]) -> str: ...
    def flush(self) -> str: ...


class _Utf8Stream:
    """Byte ids through an incremental UTF-8 decoder (same U+FFFD rules as `bytes.decode`)."""

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Sequence[int]) -> str:
        return self._decoder.decode(self._tokenizer.to_bytes(ids))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class _WindowStream:
    """Prefix-offset / read-offset decoding for tokenizers whose pieces depend on context.

    `_ids[:_read]` has been emitted; `_ids[:_prefix]` is left context only. Both offsets
    move only when the window's text does not end in U+FFFD, so each is a point where the
    text of the whole stream splits cleanly and the deltas concatenate to the full decode.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, ids: Sequence[int]) -> str:
        self._ids.extend(ids)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        old = self._decode(self._ids[self._prefix : self._read])
        new = self._decode(self._ids[self._prefix :])
        # NOTE: while the window ends in U+FFFD it grows; a UTF-8 character spans at most
        # four bytes, so only a stream of genuinely invalid bytes keeps it growing.
        if new.endswith(_REPLACEMENT) and not final:
            return ""
        # Keep the last chunk as context for the next window; drop ids before it.
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return new[len(old) :]


def _earliest_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(start, stop) of the stop string that completes first in `text`, if any.

    "First" is by end position (the one a character-by-character stream would see
    first), ties going to the longer one, so the result does not depend on chunking.
    """
    best: tuple[int, int, str] | None = None  # (end, start, stop)
    for stop in stops:
        start = text.find(stop)
        if start >= 0:
            key = (start + len(stop), start, stop)
            if best is None or key[:2] < best[:2]:
                best = key
    return None if best is None else (best[1], best[2])


def _held_length(text: str, stops: Sequence[str], longest: int) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(stop.startswith(tail) for stop in stops):
            return n
    return 0


class IncrementalDetokenizer:
    """Turns one request's output ids into streamed text, stopping at stop strings.

    `prompt_ids` are accepted for interface stability but are not decoded: the stream is
    defined as the decode of the output ids alone (what `tokenizer.decode(output)` gives).
    Once a stop string matched, later ids are ignored.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        *,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        if isinstance(stop, str):
            raise ValueError("stop must be a sequence of strings, not a single string")
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self._stops = tuple(stop)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._include_stop = include_stop_str_in_output
        self._stream: _TextStream = (
            _Utf8Stream(tokenizer)
            if isinstance(tokenizer, ByteTokenizer)
            else _WindowStream(tokenizer, skip_special_tokens)
        )
        self._pending = ""  # decoded, not yet emitted: might begin a stop string
        self._emitted: list[str] = []
        self._stop_matched: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._emitted) > 1:
            self._emitted[:] = ["".join(self._emitted)]
        return self._emitted[0] if self._emitted else ""

    @property
    def stop_matched(self) -> str | None:
        return self._stop_matched

    def update(self, new_ids: Sequence[int]) -> DetokenizerUpdate:
        """Feed newly generated ids; returns the text that became final."""
        if self._stop_matched is not None:
            return DetokenizerUpdate("", self._stop_matched)
        return self._consume(self._stream.push(new_ids), final=False)

    def flush(self) -> str:
        """Everything held back, for a request that ended without a stop string."""
        if self._stop_matched is not None:
            return ""
        return self._consume(self._stream.flush(), final=True).text_delta

    def _consume(self, chunk: str, *, final: bool) -> DetokenizerUpdate:
        text = self._pending + chunk
        self._pending = ""
        match = _earliest_stop(text, self._stops) if self._stops else None
        if match is not None:
            start, stop = match
            self._stop_matched = stop
            text = text[: start + len(stop) if self._include_stop else start]
        elif not final and self._stops:
            held = _held_length(text, self._stops, self._longest)
            if held:
                text, self._pending = text[:-held], text[-held:]
        if text:
            self._emitted.append(text)
        return DetokenizerUpdate(text, self._stop_matched)
