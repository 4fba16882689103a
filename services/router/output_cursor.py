"""What a request has already streamed to its client, so no token is sent twice.

A worker's stream restarts at a known output index: a Decode stream begins with the first
token (which the router already sent when Prefill returned it), and a request re-admitted
after its decode worker died continues at the number of tokens already sent. `advance`
takes one worker message and returns the part the client has not seen. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class StreamMismatchError(RuntimeError):
    """A worker repeated a position with a different token than the one already sent."""


@dataclass(slots=True)
class OutputCursor:
    sent: list[int] = field(default_factory=list)
    """Token ids streamed to the client, in order."""

    def advance(self, start: int, token_ids: Sequence[int]) -> int:
        """Record a worker message whose first token sits at output index `start`; returns
        how many of its leading tokens the client already has (skip those)."""
        if start < 0 or start > len(self.sent):
            raise ValueError(f"message starts at {start}; only {len(self.sent)} tokens were sent")
        overlap = min(len(self.sent) - start, len(token_ids))
        repeated = list(token_ids[:overlap])
        if repeated != self.sent[start : start + overlap]:
            raise StreamMismatchError(
                f"tokens {repeated} at {start} differ from those sent"
                f" {self.sent[start : start + overlap]}"
            )
        self.sent.extend(token_ids[overlap:])
        return overlap
