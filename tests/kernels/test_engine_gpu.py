"""GPU-only: decode steps replayed as CUDA graphs give the eager outputs, and the Triton
backend gives the torch backend's greedy tokens (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from kvferry import LLM, SamplingParams
from kvferry.services.engine.attention import AttentionMetadata, PrefillBatch, PrefillSpan
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.engine import LLMEngine

pytestmark = pytest.mark.gpu

BLOCK = 16
LENGTHS = [5, 17, 30, 1, 44]  # context before the decode step


def _engine(dtype: str) -> LLMEngine:
    config = EngineConfig(
        model="tiny",
        device="cuda",
        dtype=dtype,
        attention_backend="triton",
        cuda_graphs=True,
        num_kv_blocks=64,
        max_num_seqs=8,
        max_model_len=256,
    )
    return LLMEngine(config)


def _prefill(engine: LLMEngine, tables: list[list[int]], gen: torch.Generator) -> None:
    """Write random prompts of LENGTHS into the cache through the eager model."""
    ids = [int(t) for t in torch.randint(0, 256, (sum(LENGTHS),), generator=gen)]
    pos = [p for n in LENGTHS for p in range(n)]
    slots = [
        t[p // BLOCK] * BLOCK + p % BLOCK
        for t, n in zip(tables, LENGTHS, strict=True)
        for p in range(n)
    ]
    spans, start = [], 0
    for t, n in zip(tables, LENGTHS, strict=True):
        spans.append(PrefillSpan(start, n, n, torch.tensor(t, device="cuda")))
        start += n
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, device="cuda"),
        num_decode_tokens=0,
        decode_block_tables=torch.zeros(0, 1, dtype=torch.long, device="cuda"),
        decode_context_lens=torch.zeros(0, dtype=torch.long, device="cuda"),
        prefills=spans,
        prefill_batch=PrefillBatch.from_spans(spans, torch.device("cuda")),
    )
    cuda = torch.device("cuda")
    engine.model(
        torch.tensor(ids, device=cuda),
        torch.tensor(pos, device=cuda),
        engine.runner.kv_caches,
        meta,
    )


def _eager_decode(
    engine: LLMEngine, ids: list[int], pos: list[int], slots: list[int], tables: list[list[int]]
) -> torch.Tensor:
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, device="cuda"),
        num_decode_tokens=len(ids),
        decode_block_tables=torch.tensor(
            [t + [0] * (width - len(t)) for t in tables], device="cuda"
        ),
        decode_context_lens=torch.tensor([p + 1 for p in pos], device="cuda"),
        prefills=[],
    )
    cuda = torch.device("cuda")
    hidden: torch.Tensor = engine.model(
        torch.tensor(ids, device=cuda),
        torch.tensor(pos, device=cuda),
        engine.runner.kv_caches,
        meta,
    )
    return hidden


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("num_seqs", [4, 3], ids=["exact-bucket", "padded"])
@torch.inference_mode()
def test_graph_replay_equals_eager(dtype: str, num_seqs: int) -> None:
    engine = _engine(dtype)
    graphs = engine.runner.decode_graphs
    assert graphs is not None
    gen = torch.Generator().manual_seed(0)
    tables = [[1 + 4 * i + j for j in range(4)] for i in range(len(LENGTHS))]  # 64 slots each
    _prefill(engine, tables, gen)
    tables, lengths = tables[:num_seqs], LENGTHS[:num_seqs]
    caches = engine.runner.kv_caches
    for step in range(3):  # the same graph replays with fresh inputs every step
        pos = [n + step for n in lengths]
        ids = [int(t) for t in torch.randint(0, 256, (num_seqs,), generator=gen)]
        slots = [t[p // BLOCK] * BLOCK + p % BLOCK for t, p in zip(tables, pos, strict=True)]
        before = [c.clone() for c in caches]
        graph_out = graphs.run(ids, pos, slots, tables).clone()
        assert graphs.captured == [4]
        written = [c.clone() for c in caches]
        eager_out = _eager_decode(engine, ids, pos, slots, tables)
        if num_seqs == 4:  # same shapes, same kernels: bit for bit
            assert torch.equal(graph_out, eager_out)
        else:  # padding changes the matmul shapes, so cuBLAS may pick other kernels
            tol = 1e-5 if dtype == "float32" else 2e-2
            torch.testing.assert_close(graph_out, eager_out, rtol=tol, atol=tol)
        for old, new in zip(before, written, strict=True):
            changed = (old != new).any(dim=(0, 3, 4)).flatten().nonzero().flatten().tolist()
            assert changed == sorted(slots), "the graph wrote outside this step's slots"


def _greedy(llm: LLM, prompts: list[list[int]], n: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params)]


PROMPTS = [[(13 * i + k) % 250 for i in range(n)] for k, n in enumerate([3, 17, 40, 1, 29])]


def test_engine_tokens_with_and_without_graphs() -> None:
    args = {"device": "cuda", "dtype": "float32", "attention_backend": "triton"}
    with_graphs = LLM("tiny", cuda_graphs=True, max_num_seqs=8, **args)
    without = LLM("tiny", cuda_graphs=False, **args)
    graphs = with_graphs.engine.runner.decode_graphs
    assert graphs is not None
    assert without.engine.runner.decode_graphs is None
    assert _greedy(with_graphs, PROMPTS, 12) == _greedy(without, PROMPTS, 12)
    assert graphs.captured == [8]  # 5 sequences, padded to the bucket of 8


def _tokens_and_margins(
    model: str, backend: str, prompts: list[list[int]], n: int, **args: object
) -> list[list[tuple[int, float]]]:
    """Greedy tokens with each step's top-1 minus top-2 log-probability."""
    llm = LLM(model, device="cuda", dtype="bfloat16", attention_backend=backend, **args)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=2)
    outs = llm.generate(prompts, params)
    result = []
    for o in outs:
        assert o.logprobs is not None
        result.append([(lp.token_id, lp.top[0][1] - lp.top[1][1]) for lp in o.logprobs])
    del llm
    torch.cuda.empty_cache()
    return result


def assert_same_greedy(
    triton: list[list[tuple[int, float]]], reference: list[list[tuple[int, float]]]
) -> None:
    """Token for token; on a divergence, say where and how close the reference's top two
    were (a margin near bf16 rounding means a near-tie, not a kernel bug)."""
    for i, (got, want) in enumerate(zip(triton, reference, strict=True)):
        for step, ((tok, _), (ref_tok, margin)) in enumerate(zip(got, want, strict=True)):
            assert tok == ref_tok, (
                f"prompt {i} diverges at token {step}: triton {tok}, torch {ref_tok}"
                f" (torch top-2 logprob margin {margin:.4f})"
            )


def test_tiny_bf16_triton_matches_torch_backend() -> None:
    assert_same_greedy(
        _tokens_and_margins("tiny", "triton", PROMPTS, 8),
        _tokens_and_margins("tiny", "torch", PROMPTS, 8),
    )


def test_llama3_8b_dummy_bf16_first_tokens_match_torch_backend() -> None:
    prompts = [[128000, *range(1000, 1040)], [128000, 9906, 11, 1917]]
    args = {"load_format": "dummy", "max_model_len": 256, "num_kv_blocks": 64}
    assert_same_greedy(
        _tokens_and_margins("llama-3-8b", "triton", prompts, 4, **args),
        _tokens_and_margins("llama-3-8b", "torch", prompts, 4, **args),
    )
