"""The Triton RMSNorm kernels (alone and fused with the residual add) against `rmsnorm_ref`.

Runs on CUDA when present, else on CPU tensors under TRITON_INTERPRET=1 (conftest.py).
Outputs start as NaN, so a row or column the kernel does not write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from kvferry.kernels import rmsnorm, rmsnorm_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# NOTE: the interpreter truncates float32 -> bfloat16 (GPUs round to nearest): bf16 on GPU only.
DTYPES = [torch.float32, torch.float16, *([torch.bfloat16] if DEVICE.type == "cuda" else [])]
EPS = 1e-6

# input shapes: one row, rows of a width that is not a power of two, per-head rows
SHAPES = [(1, 64), (7, 100), (5, 3, 16)]


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Sums of squares accumulate in another order: the normalised value may land one
    ulp of the dtype away before the weight multiplies it."""
    if dtype == torch.float32:
        return {"atol": 1e-5, "rtol": 1e-5}
    return {"atol": 1e-3, "rtol": 2e-3}  # one fp16 ulp (2^-10 relative), twice


def randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("magnitude", [3.0, 1e-3])  # 1e-3: eps is half the mean square
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_reference(
    shape: tuple[int, ...], dtype: torch.dtype, magnitude: float
) -> None:
    x = randn(*shape, dtype=dtype, seed=len(shape)) * magnitude
    weight = 1 + randn(shape[-1], dtype=dtype, seed=1) * 0.1
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    got = rmsnorm.rms_norm(x, weight, EPS, out=out)
    assert got is out
    torch.testing.assert_close(got, rmsnorm_ref.rms_norm(x, weight, EPS), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_add_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, dtype=dtype, seed=2)
    residual = randn(*shape, dtype=dtype, seed=3) * 5
    weight = randn(shape[-1], dtype=dtype, seed=4)
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    residual_out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    x_before, residual_before = x.clone(), residual.clone()
    normed, new_residual = rmsnorm.fused_add_rms_norm(
        x, residual, weight, EPS, out=out, residual_out=residual_out
    )
    expected, expected_residual = rmsnorm_ref.fused_add_rms_norm(x, residual, weight, EPS)
    assert normed is out and new_residual is residual_out
    assert torch.equal(new_residual, expected_residual)  # one rounded add: exact
    torch.testing.assert_close(normed, expected, **tolerance(dtype))
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


def test_strided_rows_and_float32_weight_promote_like_torch() -> None:
    # per-head rows of a fused q/k projection (a strided view), float32 weight on fp16
    fused = randn(4, 3 * 16 + 8, dtype=torch.float16, seed=5)
    heads = fused[:, : 3 * 16].view(4, 3, 16)
    weight = randn(16, dtype=torch.float32, seed=6)
    got = rmsnorm.rms_norm(heads, weight, EPS)
    expected = rmsnorm_ref.rms_norm(heads, weight, EPS)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments() -> None:
    x = randn(2, 8, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"weight must be \[8\]"):
        rmsnorm.rms_norm(x, randn(4, dtype=torch.float32, seed=0), EPS)
    with pytest.raises(ValueError, match="residual"):
        rmsnorm.fused_add_rms_norm(x, x.half(), randn(8, dtype=torch.float32, seed=0), EPS)
    with pytest.raises(ValueError, match="outputs must be contiguous"):
        rmsnorm.rms_norm(x, randn(8, dtype=torch.float32, seed=0), EPS, out=x.t())


def test_model_with_the_fused_norms_matches_the_torch_path() -> None:
    """The tiny preset, same weights, its norms through the kernels or through torch: the
    restructured residual stream and the kernels give the same logits and next token."""
    from kvferry.services.engine.attention import AttentionMetadata, PrefillSpan
    from kvferry.services.engine.model import LlamaForCausalLM, load_model
    from kvferry.services.engine.model.presets import get_preset

    config = get_preset("tiny")
    reference = load_model(
        config, None, load_format="dummy", dtype=torch.float32, device=DEVICE, seed=3
    )
    fused = LlamaForCausalLM(config, fused_norm=True).to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    fused.rotary_emb.reset_cache()
    assert fused.norm._add_norm is rmsnorm.fused_add_rms_norm  # the kernels are in place
    assert reference.norm._add_norm is rmsnorm_ref.fused_add_rms_norm
    block_size, tokens = 4, list(range(60, 70))
    table = torch.tensor([3, 0, 2], device=DEVICE)  # out of order
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(
            [int(table[p // block_size]) * block_size + p % block_size for p in range(10)],
            device=DEVICE,
        ),
        num_decode_tokens=0,
        decode_block_tables=torch.zeros(0, 1, dtype=torch.long, device=DEVICE),
        decode_context_lens=torch.zeros(0, dtype=torch.long, device=DEVICE),
        prefills=[PrefillSpan(0, len(tokens), len(tokens), table)],
    )
    shape = (2, 4, block_size, config.num_key_value_heads, config.head_dim)
    logits = []
    for model in (reference, fused):
        caches = [torch.zeros(shape, device=DEVICE) for _ in range(config.num_hidden_layers)]
        ids = torch.tensor(tokens, device=DEVICE)
        hidden = model(ids, torch.arange(len(tokens), device=DEVICE), caches, meta)
        logits.append(model.compute_logits(hidden))
    scale = logits[0].abs().max().item()
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(logits[1].argmax(-1), logits[0].argmax(-1))
