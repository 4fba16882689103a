"""RouterConfig refuses settings that cannot work, naming the fix."""

from __future__ import annotations

import pytest

from kvferry.services.router.config import RouterConfig


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model": ""}, "model must be set"),
        ({"port": 70000}, "port"),
        ({"registry_port": -2}, "registry_port"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"short_prompt_tokens": -1}, "short_prompt_tokens"),
        ({"queue_timeout_s": 0}, "queue_timeout_s"),
        ({"request_timeout_s": -1}, "request_timeout_s"),
        ({"tls_cert": "c.pem"}, "--tls-key"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, "--registry-port"),
        ({"worker_ttl_s": 2.0, "heartbeat_interval_s": 2.0}, "must exceed"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        RouterConfig(**changes)  # type: ignore[arg-type]


def test_defaults_and_a_tls_setup_are_accepted() -> None:
    assert RouterConfig().port == 50051
    RouterConfig(tls_cert="c.pem", tls_key="k.pem", registry_port=50052)
