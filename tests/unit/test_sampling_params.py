"""SamplingParams: every invalid value raises ValueError naming its field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvferry.sampling_params import SamplingParams


def test_defaults_are_valid_and_not_greedy() -> None:
    params = SamplingParams()
    assert (params.max_tokens, params.temperature, params.top_k, params.top_p) == (16, 1.0, 0, 1.0)
    assert (params.stop, params.stop_token_ids, params.logprobs) == ((), (), None)
    assert params.greedy is False


def test_temperature_zero_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).greedy is True
    assert SamplingParams(temperature=0).greedy is True


def test_params_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().max_tokens = 3


def test_stop_and_stop_token_ids_are_normalised_to_tuples() -> None:
    params = SamplingParams(stop=["a", "bc"], stop_token_ids=[7, 8])
    assert (params.stop, params.stop_token_ids) == (("a", "bc"), (7, 8))
    assert SamplingParams(stop="end").stop == ("end",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 1},
        {"temperature": 0.0},
        {"temperature": 2.5},
        {"top_k": 0},
        {"top_k": 50},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"seed": 0},
        {"seed": 2**63 - 1},
        {"stop_token_ids": (0,)},
        {"logprobs": 0},
        {"logprobs": 20},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict[str, object]) -> None:
    SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 1.0}, "max_tokens"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.01}, "min_p"),
        ({"min_p": math.nan}, "min_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"stop": ("ok", "")}, "stop strings"),
        ({"stop": ""}, "stop strings"),
        ({"stop": (3,)}, "stop strings"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
        ({"stop_token_ids": (True,)}, "stop_token_ids"),
        ({"stop_token_ids": (1.0,)}, "stop_token_ids"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_invalid_values_raise_value_error_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs", [{"top_k": 2.5}, {"logprobs": 1.5}, {"seed": 1.5}], ids=str)
def test_integer_fields_reject_floats(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": "0.5"}, {"top_p": None}, {"min_p": "0"}, {"top_k": None}],
    ids=str,
)
def test_non_numeric_values_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)
