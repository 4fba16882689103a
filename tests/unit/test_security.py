"""Token files, TLS server credentials and the bearer-token interceptor's decisions."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest

from kvferry.errors import ConfigError
from kvferry.security import (
    BearerTokenInterceptor,
    read_pem_file,
    read_token_file,
    server_credentials,
    validate_token,
)
from tests.tls_certs import write_self_signed

TOKEN = "s3cr3t-token"
GENERATION = "kvferry.v1.Generation"


# --- read_token_file ---------------------------------------------------------------------


def test_token_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n\n")
    assert read_token_file(path) == TOKEN
    assert read_token_file(str(path)) == TOKEN


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b" \n\t\n", "is empty"),
        (b"two words\n", "without spaces or line breaks"),
        (b"line1\nline2\n", "without spaces or line breaks"),
        (b"caf\xc3\xa9", "printable ASCII"),
        (b"\xff\xfe", "is not UTF-8"),
    ],
)
def test_bad_token_file_content(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_token_file(path)
    assert str(path) in str(info.value)


def test_missing_token_file_names_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(ConfigError, match="does not exist; write the bearer token") as info:
        read_token_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_as_token_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read token file {tmp_path}"):
        read_token_file(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match=r"Permission denied.*permissions"):
            read_token_file(path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("token", ["", "a b", "tab\there", "new\nline", "ünïcode"])
def test_validate_token_rejects(token: str) -> None:
    with pytest.raises(ConfigError, match="my token"):
        validate_token(token, source="my token")


def test_validate_token_rejects_non_str() -> None:
    with pytest.raises(ConfigError, match="my token must be a str, got bytes"):
        validate_token(b"abc", source="my token")  # type: ignore[arg-type]


def test_validate_token_accepts_printable_ascii() -> None:
    token = "abc-DEF_123.~+/="
    assert validate_token(token) == token


# --- server_credentials ------------------------------------------------------------------


def test_no_cert_and_no_key_means_plaintext() -> None:
    assert server_credentials(None, None) is None


def test_valid_pair_gives_credentials(tmp_path: Path) -> None:
    files = write_self_signed(tmp_path)
    creds = server_credentials(files.cert_file, files.key_file)
    assert isinstance(creds, grpc.ServerCredentials)
    assert isinstance(server_credentials(str(files.cert_file), str(files.key_file)), type(creds))


@pytest.mark.parametrize("given", ["cert", "key"])
def test_cert_and_key_go_together(tmp_path: Path, given: str) -> None:
    files = write_self_signed(tmp_path)
    cert, key = (files.cert_file, None) if given == "cert" else (None, files.key_file)
    with pytest.raises(ConfigError, match=r"both a certificate and a private key.*set both"):
        server_credentials(cert, key)


def test_missing_cert_file(tmp_path: Path) -> None:
    files = write_self_signed(tmp_path)
    missing = tmp_path / "missing.crt"
    with pytest.raises(ConfigError, match=f"TLS certificate file {missing} does not exist"):
        server_credentials(missing, files.key_file)


def test_missing_key_file(tmp_path: Path) -> None:
    files = write_self_signed(tmp_path)
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError, match=f"TLS key file {missing} does not exist"):
        server_credentials(files.cert_file, missing)


def test_swapped_cert_and_key_are_caught(tmp_path: Path) -> None:
    files = write_self_signed(tmp_path)
    with pytest.raises(ConfigError, match=f"{files.key_file} holds no PEM CERTIFICATE"):
        server_credentials(files.key_file, files.cert_file)


def test_not_pem_file(tmp_path: Path) -> None:
    path = tmp_path / "ca.txt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match=f"root file {path} holds no PEM CERTIFICATE"):
        read_pem_file(path, what="root file", label="CERTIFICATE")


# --- BearerTokenInterceptor --------------------------------------------------------------


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] | None


async def _ok(request: Any, context: Any) -> None:
    return None


UNARY = grpc.unary_unary_rpc_method_handler(_ok)
STREAM = grpc.unary_stream_rpc_method_handler(_ok)


def intercept(
    metadata: tuple[tuple[str, str | bytes], ...] | None,
    method: str = f"/{GENERATION}/Generate",
    handler: Any = UNARY,
) -> Any:
    interceptor = BearerTokenInterceptor(TOKEN, [GENERATION])

    async def continuation(details: Any) -> Any:
        return handler

    return asyncio.run(interceptor.intercept_service(continuation, CallDetails(method, metadata)))


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", f"Bearer {TOKEN}"),),
        (("authorization", f"bearer {TOKEN}"),),
        (("x-other", "1"), ("authorization", f"Bearer  {TOKEN} ")),
    ],
)
def test_right_token_passes(metadata: tuple[tuple[str, str], ...]) -> None:
    assert intercept(metadata) is UNARY


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (),
        (("x-other", f"Bearer {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", f"Bearer {TOKEN[:-1]}"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
        (("authorization", f"Bearer {TOKEN}".encode()),),
    ],
)
def test_missing_or_wrong_token_is_denied(metadata: Any) -> None:
    denied = intercept(metadata)
    assert denied is not UNARY
    assert not denied.response_streaming and not denied.request_streaming


def test_denial_keeps_the_streaming_kind() -> None:
    denied = intercept(None, handler=STREAM)
    assert denied is not STREAM
    assert denied.response_streaming and not denied.request_streaming


@pytest.mark.parametrize(
    "method",
    ["/grpc.health.v1.Health/Check", "/kvferry.v1.Registry/Register", "/kvferry.v1.GenerationX/A"],
)
def test_other_services_pass_without_token(method: str) -> None:
    assert intercept(None, method=method) is UNARY


def test_unknown_method_stays_unknown() -> None:
    assert intercept(None, handler=None) is None


@pytest.mark.parametrize(
    ("token", "services", "message"),
    [
        ("", [GENERATION], "bearer token is empty"),
        ("a b", [GENERATION], "without spaces"),
        (TOKEN, [], "protected_services is empty"),
        (TOKEN, ["/kvferry.v1.Generation/Generate"], "full service name"),
    ],
)
def test_interceptor_rejects_bad_config(token: str, services: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BearerTokenInterceptor(token, services)
