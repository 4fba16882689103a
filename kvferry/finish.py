"""Why a request ended: one enum for the engine, the wire mapping and the SDK."""

from __future__ import annotations

import enum


class FinishReason(enum.Enum):
    """Why a request ended (an enum on the wire too, never a free string)."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context length
    ABORT = "abort"  # cancelled by the caller
