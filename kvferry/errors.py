"""The kvferry error hierarchy.

Bad input raises `ValueError` (or a subclass here that also is one) so that callers
and servicers can map it to `INVALID_ARGUMENT` without knowing every type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class KvferryError(Exception):
    """Base of every error kvferry raises on purpose."""


class ConfigError(KvferryError, ValueError):
    """A configuration value, model folder or checkpoint is invalid."""


class CapacityError(KvferryError):
    """A request can never fit (KV blocks, sequence slots) in this engine."""


class TransferError(KvferryError):
    """KV blocks could not be moved between workers."""


class RequestError(KvferryError):
    """A call to a kvferry server failed with a gRPC status (raised by the client SDK).

    `code` is the `grpc.StatusCode`, `details` the server's message, `method` the RPC
    (e.g. "Generate"). Subclasses name the codes a caller usually handles.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, method: str = "") -> None:
        self.code = code
        self.details = details
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {details}")


class InvalidRequestError(RequestError, ValueError):
    """INVALID_ARGUMENT: the server rejected the request (prompt, sampling, model length)."""


class NotFoundError(RequestError):
    """NOT_FOUND: an unknown model (see `list_models()`)."""


class UnavailableError(RequestError):
    """UNAVAILABLE: the server or every worker is down; raised after the SDK's retries."""


class ResourceExhaustedError(RequestError):
    """RESOURCE_EXHAUSTED: no worker has room for the request now; try again later."""


class DeadlineExceededError(RequestError, TimeoutError):
    """DEADLINE_EXCEEDED: the call's deadline passed before the request finished."""


class UnauthenticatedError(RequestError):
    """UNAUTHENTICATED or PERMISSION_DENIED: a missing or wrong bearer token."""
