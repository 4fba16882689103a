"""The ways a KV transfer fails, as `TransferError` subclasses a caller can branch on.

A prefill worker reacts differently to each: a timeout or an unreachable receiver means
retry elsewhere or let the decode worker compute the prompt; an unknown request means the
decode worker dropped its admission (re-admit); corruption that survived a resend and a
rejection mean the two sides disagree (give up on this pair).
"""

from __future__ import annotations

from kvferry.errors import TransferError


class ChunkCorruptError(TransferError):
    """A chunk failed verification: its CRC32C, or its shape against its payload length.

    Transient (a resend may succeed).
    """


class ChunkTooLargeError(TransferError, ValueError):
    """One block of one layer is bigger than `max_chunk_bytes`: raise the limit."""


class MalformedPushError(TransferError, ValueError):
    """A push stream breaks the protocol (empty or changing request id, data after the
    end message). Maps to INVALID_ARGUMENT."""


class UnknownRequestError(TransferError):
    """The receiver is not waiting for KV for this request."""


class TransferRejectedError(TransferError):
    """The receiver refused verified KV (positions, layers or layout it did not expect),
    the push was incomplete, or corruption persisted after a resend."""


class TransferTimeoutError(TransferError):
    """The push did not finish within its deadline."""


class ReceiverUnavailableError(TransferError):
    """The receiver could not be reached (or the transport failed mid-stream)."""
