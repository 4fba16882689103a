"""OutputCursor: a worker stream restarting at a known index never repeats a token."""

from __future__ import annotations

import itertools

import pytest

from kvferry.services.router.output_cursor import OutputCursor, StreamMismatchError


def test_decode_repeats_the_first_token_that_prefill_returned() -> None:
    cursor = OutputCursor()
    assert cursor.advance(0, [42]) == 0  # Prefill's first token goes out at once
    assert cursor.advance(0, [42]) == 1  # Decode's first message repeats it: skip 1
    assert cursor.advance(1, [7, 8]) == 0
    assert cursor.sent == [42, 7, 8]


def test_readmission_continues_after_what_was_sent() -> None:
    cursor = OutputCursor([1, 2, 3])
    assert cursor.advance(3, [4]) == 0
    assert cursor.sent == [1, 2, 3, 4]


@pytest.mark.parametrize(("sent", "start"), [(3, 4), (0, 1), (2, -1)])
def test_a_gap_or_negative_start_is_refused(sent: int, start: int) -> None:
    cursor = OutputCursor(list(range(sent)))
    with pytest.raises(ValueError, match="only"):
        cursor.advance(start, [9])
    assert cursor.sent == list(range(sent))


def test_a_repeated_position_with_another_token_is_a_mismatch() -> None:
    cursor = OutputCursor([5, 6])
    with pytest.raises(StreamMismatchError):
        cursor.advance(1, [7, 8])
    assert cursor.sent == [5, 6]  # nothing recorded


def test_every_split_of_a_stream_into_overlapping_messages_sends_it_once() -> None:
    """Exhaustive over a 6-token stream: any restart point and message cuts reproduce it."""
    stream = [10, 11, 12, 13, 14, 15]
    for already in range(len(stream) + 1):
        for start in range(already + 1):
            rest = stream[start:]
            for cuts in itertools.product([False, True], repeat=max(len(rest) - 1, 0)):
                cursor = OutputCursor(stream[:already])
                messages: list[list[int]] = [[]]
                for i, token in enumerate(rest):
                    if i and cuts[i - 1]:
                        messages.append([])
                    messages[-1].append(token)
                position, forwarded = start, list(stream[:already])
                for message in messages:
                    skip = cursor.advance(position, message)
                    forwarded += message[skip:]
                    position += len(message)
                assert forwarded == stream == cursor.sent
