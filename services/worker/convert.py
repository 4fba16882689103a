"""Engine results -> proto messages (the worker side of `kvferry.wire`)."""

from __future__ import annotations

from kvferry._proto.kvferry.v1 import generation_pb2 as gen_pb
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as kv_pb
from kvferry.services.engine.cache_layout import CacheLayout
from kvferry.services.engine.outputs import EngineStats, RequestOutput
from kvferry.services.engine.sampler import TokenLogprob
from kvferry.services.kvtransfer.compression import KVCompression
from kvferry.services.kvtransfer.dtypes import to_wire
from kvferry.wire import FINISH_TO_PROTO


def logprob_to_proto(lp: TokenLogprob) -> gen_pb.TokenLogprob:
    return gen_pb.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top=[gen_pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
    )


def output_to_proto(out: RequestOutput, num_logprobs_sent: int) -> gen_pb.GenerateResponse:
    """One streamed message: this step's new tokens and text; usage on the last."""
    msg = gen_pb.GenerateResponse(
        request_id=out.request_id, token_ids=out.new_token_ids, text=out.text_delta
    )
    if out.logprobs is not None:
        msg.logprobs.extend(logprob_to_proto(lp) for lp in out.logprobs[num_logprobs_sent:])
    if out.finished and out.finish_reason is not None:
        msg.finish_reason = FINISH_TO_PROTO[out.finish_reason]
        msg.usage.CopyFrom(
            gen_pb.Usage(
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(out.token_ids),
                cached_tokens=out.num_cached_tokens,
            )
        )
    return msg


def layout_to_proto(
    layout: CacheLayout, compression: KVCompression = KVCompression.NONE
) -> kv_pb.KVLayout:
    return kv_pb.KVLayout(
        compression=compression.wire,
        block_size=layout.block_size,
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        dtype=to_wire(layout.dtype),
    )


def load_to_proto(stats: EngineStats) -> gen_pb.WorkerLoad:
    return gen_pb.WorkerLoad(
        num_waiting=stats.num_waiting,
        num_running=stats.num_running,
        free_kv_blocks=stats.free_blocks,
        total_kv_blocks=stats.total_blocks,
        cached_kv_blocks=stats.cached_blocks,
        prefill_tokens_waiting=stats.prefill_tokens_waiting,
    )
