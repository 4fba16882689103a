"""TLS and bearer-token helpers: server credentials, token files, the token interceptor.

The router serves the client API (`kvferry.v1.Generation`) with optional TLS and an
optional bearer token; health checks, reflection and the worker `Registry` stay open so
probes and workers need no token. The client SDK reads its token and CA files through the
same helpers, so both sides report a bad file the same way.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import grpc

from kvferry.errors import ConfigError

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"  # gRPC metadata keys are lower-case
BEARER_SCHEME = "Bearer"


def read_token_file(path: str | Path) -> str:
    """The bearer token in `path`, surrounding whitespace stripped.

    Raises ConfigError when the file is missing, unreadable, empty or not one token.
    """
    fix = "write the bearer token into it (one line) or fix the path"
    try:
        text = _read_bytes(path, "token file", fix).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path} is not UTF-8 text; {fix}") from None
    token = text.strip()
    if not token:
        raise ConfigError(f"token file {path} is empty; write the bearer token into it")
    return validate_token(token, source=f"token file {path}")


def validate_token(token: str, *, source: str = "token") -> str:
    """`token` if it can travel as `authorization: Bearer <token>` (printable ASCII, no
    whitespace); ConfigError naming `source` otherwise."""
    if not isinstance(token, str):
        raise ConfigError(f"{source} must be a str, got {type(token).__name__}")
    if not token:
        raise ConfigError(f"{source} is empty; give a non-empty bearer token")
    if not all("!" <= ch <= "~" for ch in token):
        raise ConfigError(
            f"{source} must be printable ASCII without spaces or line breaks"
            " (e.g. `openssl rand -hex 32`)"
        )
    return token


def read_pem_file(path: str | Path, *, what: str, label: str) -> bytes:
    """The bytes of a PEM file holding a `label` block ("CERTIFICATE", "PRIVATE KEY");
    ConfigError naming the path otherwise (a swapped cert/key pair fails here, not when
    the server binds or the client connects)."""
    data = _read_bytes(path, what, "check the path")
    if b"-----BEGIN " not in data or f"{label}-----".encode() not in data:
        raise ConfigError(f"{what} {path} holds no PEM {label}; check the path")
    return data


def server_credentials(
    cert_file: str | Path | None, key_file: str | Path | None
) -> grpc.ServerCredentials | None:
    """TLS credentials from a PEM certificate chain and its private key; None when neither
    is given (plaintext). Raises ConfigError when only one is given or a file is bad."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        given, missing = ("certificate", "key") if key_file is None else ("key", "certificate")
        raise ConfigError(
            f"TLS needs both a certificate and a private key: the {given} file is set but the"
            f" {missing} file is not; set both or neither"
        )
    cert = read_pem_file(cert_file, what="TLS certificate file", label="CERTIFICATE")
    key = read_pem_file(key_file, what="TLS key file", label="PRIVATE KEY")
    return grpc.ssl_server_credentials([(key, cert)])


# A grpc.aio continuation: method details -> the handler that would serve them.
_Continuation = Callable[[Any], Awaitable[Any]]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls to `protected_services` (full names, e.g. "kvferry.v1.Generation")
    without `authorization: Bearer <token>` metadata, with UNAUTHENTICATED. Calls to other
    services pass through untouched. Tokens are compared in constant time."""

    def __init__(self, token: str, protected_services: Collection[str]) -> None:
        self._token = validate_token(token, source="bearer token").encode("ascii")
        services = frozenset(protected_services)
        if not services:
            raise ConfigError("protected_services is empty: name the services to protect")
        for name in services:
            if not name or "/" in name:
                raise ConfigError(
                    f"protected service {name!r} must be a full service name such as"
                    " 'kvferry.v1.Generation' (no slashes)"
                )
        self._services = services

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # "/kvferry.v1.Generation/Generate"
        handler = await continuation(handler_call_details)
        if handler is None or method.lstrip("/").rpartition("/")[0] not in self._services:
            return handler
        problem = self._problem(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        return _denying_handler(handler, method, problem)

    def _problem(self, metadata: Collection[tuple[str, str | bytes]]) -> str | None:
        """Why the call's credentials are refused, or None when they are accepted."""
        values = [value for key, value in metadata if key == AUTHORIZATION_KEY]
        if not values:
            return f"missing '{AUTHORIZATION_KEY}: {BEARER_SCHEME} <token>' metadata"
        if len(values) > 1:
            return f"more than one '{AUTHORIZATION_KEY}' metadata entry"
        value = values[0]
        if isinstance(value, bytes):
            return f"'{AUTHORIZATION_KEY}' metadata is not text"
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() != BEARER_SCHEME.lower():
            return f"'{AUTHORIZATION_KEY}' metadata must use the {BEARER_SCHEME} scheme"
        if not hmac.compare_digest(credential.strip().encode("utf-8"), self._token):
            return "invalid bearer token"
        return None


def _denying_handler(handler: Any, method: str, problem: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with UNAUTHENTICATED."""

    async def deny(_request: object, context: grpc.aio.ServicerContext) -> None:
        log.warning("rejected %s from %s: %s", method, context.peer(), problem)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


def _read_bytes(path: str | Path, what: str, fix: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {fix}") from None
    except OSError as err:
        raise ConfigError(
            f"cannot read {what} {path} ({err.strerror or err}); {fix} and check its permissions"
        ) from None
