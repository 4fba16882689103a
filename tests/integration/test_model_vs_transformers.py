"""Our model, loaded from a transformers checkpoint, against transformers itself.

Each case checks the logits of a whole prompt run as one prefill span, then the same prompt
run through the paged cache as two prefill chunks followed by one-token decode steps, with
blocks deliberately out of order. float32 logits must agree to 1e-4 relative.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvferry.services.engine.attention import AttentionMetadata, PrefillSpan
from kvferry.services.engine.model import LlamaForCausalLM, ModelConfig, load_model
from tests.integration.hf_models import VOCAB_SIZE, hf_all_logits, hf_greedy, make_hf_model

BLOCK_SIZE = 4
NUM_BLOCKS = 40
PROMPT_LEN = 37
CASES = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "llama3-rope": ("llama3-rope", {}),
    "tied": ("llama", {"tie": True}),
    "sharded": ("qwen3", {"sharded": True}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {case: make_hf_model(root, arch, **kw) for case, (arch, kw) in CASES.items()}


class PagedSequences:
    """Drives the model over sequences in a NaN-poisoned paged cache, like the runner would."""

    def __init__(self, model: LlamaForCausalLM, seed: int = 0) -> None:
        c: ModelConfig = model.config
        self.model = model
        shape = (2, NUM_BLOCKS, BLOCK_SIZE, c.num_key_value_heads, c.head_dim)
        dtype = model.embed_tokens.weight.dtype
        self.kv_caches = [
            torch.full(shape, float("nan"), dtype=dtype) for _ in range(c.num_hidden_layers)
        ]
        # Shuffled blocks, never block 0: padding in decode block tables points at NaNs.
        gen = torch.Generator().manual_seed(seed)
        self.free = (torch.randperm(NUM_BLOCKS - 1, generator=gen) + 1).tolist()

    def new_table(self, max_len: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-max_len // BLOCK_SIZE))]

    @torch.inference_mode()
    def step(
        self,
        decodes: list[tuple[list[int], int, int]],
        prefills: list[tuple[list[int], int, list[int]]],
    ) -> torch.Tensor:
        """Decodes as (table, position, token), prefills as (table, start, tokens) ->
        float32 logits for every token, decodes first."""
        ids, positions, slot_ids, spans = [], [], [], []
        items = [(t, p, [tok]) for t, p, tok in decodes] + prefills
        for i, (table, start, tokens) in enumerate(items):
            if i >= len(decodes):
                spans.append(
                    PrefillSpan(len(ids), len(tokens), start + len(tokens), torch.tensor(table))
                )
            ids += tokens
            positions += range(start, start + len(tokens))
            slot_ids += [
                table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                for p in range(start, start + len(tokens))
            ]
        width = max((len(t) for t, _, _ in decodes), default=0) + 1
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slot_ids),
            num_decode_tokens=len(decodes),
            decode_block_tables=torch.tensor(
                [t + [0] * (width - len(t)) for t, _, _ in decodes], dtype=torch.long
            ).view(len(decodes), width),
            decode_context_lens=torch.tensor([p + 1 for _, p, _ in decodes], dtype=torch.long),
            prefills=spans,
        )
        hidden = self.model(torch.tensor(ids), torch.tensor(positions), self.kv_caches, meta)
        return self.model.compute_logits(hidden)


def load(path: Path, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    config = ModelConfig.from_folder(path)
    return load_model(config, path, load_format="auto", dtype=dtype, device=torch.device("cpu"))


def prompt(seed: int = 1, length: int = PROMPT_LEN) -> list[int]:
    return torch.randint(
        3, VOCAB_SIZE, (length,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("case", list(CASES))
def test_full_prompt_logits(checkpoints: dict[str, Path], case: str) -> None:
    path = checkpoints[case]
    ids = prompt()
    runner = PagedSequences(load(path))

    logits = runner.step([], [(runner.new_table(len(ids)), 0, ids)])

    assert_logits_close(logits, hf_all_logits(path, ids))


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_prefill_then_decode(checkpoints: dict[str, Path], case: str) -> None:
    path = checkpoints[case]
    ids = prompt()
    expected = hf_all_logits(path, ids)  # [T, vocab]
    runner = PagedSequences(load(path))
    table = runner.new_table(len(ids))

    got = [runner.step([], [(table, 0, ids[:9])]), runner.step([], [(table, 9, ids[9:15])])]
    got += [runner.step([(table, p, ids[p])], []) for p in range(15, len(ids))]

    assert_logits_close(torch.cat(got), expected)


def test_mixed_batch_step(checkpoints: dict[str, Path]) -> None:
    """Two decodes and two prefill spans (one after a cached prefix) in a single forward."""
    path = checkpoints["qwen2"]
    a, b, c = prompt(1, 20), prompt(2, 13), prompt(3, 11)
    runner = PagedSequences(load(path))
    ta, tb, tc = (runner.new_table(len(s)) for s in (a, b, c))
    runner.step([], [(ta, 0, a[:19]), (tb, 0, b[:12]), (tc, 0, c[:5])])

    logits = runner.step([(ta, 19, a[19]), (tb, 12, b[12])], [(tc, 5, c[5:])])

    assert_logits_close(logits[0], hf_all_logits(path, a)[19])
    assert_logits_close(logits[1], hf_all_logits(path, b)[12])
    assert_logits_close(logits[2:], hf_all_logits(path, c)[5:])


@pytest.mark.parametrize("case", ["llama", "qwen3"])
def test_greedy_tokens_match(checkpoints: dict[str, Path], case: str) -> None:
    path = checkpoints[case]
    ids = prompt(4, 12)
    expected = hf_greedy(path, ids, max_new_tokens=16, ignore_eos=True)
    runner = PagedSequences(load(path))
    table = runner.new_table(len(ids) + 16)

    tokens = [int(runner.step([], [(table, 0, ids)])[-1].argmax())]
    while len(tokens) < 16:
        position = len(ids) + len(tokens) - 1
        tokens.append(int(runner.step([(table, position, tokens[-1])], [])[0].argmax()))

    assert tokens == expected


def test_bf16_load_runs(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["qwen3"]
    ids = prompt()
    model = load(path, torch.bfloat16)
    runner = PagedSequences(model)

    logits = runner.step([], [(runner.new_table(len(ids)), 0, ids)])

    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert logits.dtype == torch.float32 and logits.isfinite().all()
    expected = hf_all_logits(path, ids)
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()  # measured ~0.02
