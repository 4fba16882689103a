"""Proto <-> domain conversions round-trip and reject bad values with ValueError."""

from __future__ import annotations

import pytest

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams
from kvferry.wire import (
    FINISH_FROM_PROTO,
    FINISH_TO_PROTO,
    sampling_from_proto,
    sampling_to_proto,
)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(max_tokens=7, temperature=0.0, stop=("x", "yz"), ignore_eos=True),
        SamplingParams(temperature=0.75, top_p=0.5, top_k=3, min_p=0.25, seed=2**40, logprobs=0),
        SamplingParams(stop_token_ids=(1, 2), include_stop_str_in_output=True),
        SamplingParams(skip_special_tokens=False),
    ],
)
def test_sampling_round_trip(params: SamplingParams) -> None:
    # NOTE: float fields travel as float32; these values are exactly representable.
    wire = gen_pb.SamplingOptions.FromString(sampling_to_proto(params).SerializeToString())
    assert sampling_from_proto(wire) == params


def test_unset_options_take_the_defaults() -> None:
    assert sampling_from_proto(gen_pb.SamplingOptions()) == SamplingParams()


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        (gen_pb.SamplingOptions(max_tokens=0), "max_tokens"),
        (gen_pb.SamplingOptions(temperature=-1.0), "temperature"),
        (gen_pb.SamplingOptions(top_p=0.0), "top_p"),
        (gen_pb.SamplingOptions(min_p=2.0), "min_p"),
        (gen_pb.SamplingOptions(stop=[""]), "stop"),
        (gen_pb.SamplingOptions(logprobs=99), "logprobs"),
    ],
)
def test_bad_options_raise_value_error(opts: gen_pb.SamplingOptions, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sampling_from_proto(opts)


def test_finish_reasons_map_both_ways() -> None:
    assert set(FINISH_TO_PROTO) == set(FinishReason)
    for reason, value in FINISH_TO_PROTO.items():
        assert FINISH_FROM_PROTO[value] is reason
    assert gen_pb.FINISH_REASON_UNSPECIFIED not in FINISH_FROM_PROTO
