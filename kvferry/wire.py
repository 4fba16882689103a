"""Proto messages <-> kvferry's domain types, in one place for router, workers and SDK.

Bad values raise ValueError with a message naming the field; servicers map that to
INVALID_ARGUMENT. This module imports no torch.
"""

from __future__ import annotations

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry.finish import FinishReason
from kvferry.sampling_params import SamplingParams

FINISH_TO_PROTO = {
    FinishReason.STOP: gen_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: gen_pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: gen_pb.FINISH_REASON_ABORT,
}
FINISH_FROM_PROTO = {v: k for k, v in FINISH_TO_PROTO.items()}

_DEFAULTS = SamplingParams()


def sampling_from_proto(opts: gen_pb.SamplingOptions) -> SamplingParams:
    """Unset optional fields take SamplingParams' defaults (written once, there)."""
    return SamplingParams(
        max_tokens=opts.max_tokens if opts.HasField("max_tokens") else _DEFAULTS.max_tokens,
        temperature=opts.temperature if opts.HasField("temperature") else _DEFAULTS.temperature,
        top_p=opts.top_p if opts.HasField("top_p") else _DEFAULTS.top_p,
        top_k=opts.top_k,
        min_p=opts.min_p,
        seed=opts.seed if opts.HasField("seed") else None,
        stop=tuple(opts.stop),
        stop_token_ids=tuple(opts.stop_token_ids),
        ignore_eos=opts.ignore_eos,
        logprobs=opts.logprobs if opts.HasField("logprobs") else None,
        include_stop_str_in_output=opts.include_stop_str_in_output,
        skip_special_tokens=(
            opts.skip_special_tokens
            if opts.HasField("skip_special_tokens")
            else _DEFAULTS.skip_special_tokens
        ),
    )


def sampling_to_proto(params: SamplingParams) -> gen_pb.SamplingOptions:
    opts = gen_pb.SamplingOptions(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        include_stop_str_in_output=params.include_stop_str_in_output,
        skip_special_tokens=params.skip_special_tokens,
    )
    if params.seed is not None:
        opts.seed = params.seed
    if params.logprobs is not None:
        opts.logprobs = params.logprobs
    return opts
