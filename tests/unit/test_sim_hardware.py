"""The simulator's physics: the step-time roofline, link times by tier, calibration files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvferry.sim.hardware import GIB, GpuModel, LinkModel, load_calibration
from kvferry.topology import Tier

GPU = GpuModel()


def test_attention_flops_match_a_per_position_sum() -> None:
    g = GpuModel(layers=2, hidden=8)
    for cached, total in [(0, 1), (0, 7), (3, 7), (6, 7), (5, 5)]:
        brute = sum(2 * 2 * g.layers * g.hidden * (p + 1) for p in range(cached, total))
        assert g.attention_flops(cached, total) == brute


def test_prefill_is_compute_bound_for_long_prompts() -> None:
    prompts = [(0, 8192), (1024, 4096)]
    new = 8192 + 3072
    matmul = 2 * (GPU.block_params * new + GPU.head_params * 2) / (989.4e12 * 0.55)
    attention = (GPU.attention_flops(0, 8192) + GPU.attention_flops(1024, 4096)) / (989.4e12 * 0.45)
    memory = (GPU.weight_bytes + GPU.kv_bytes_per_token * 1024) / (3.35e12 * 0.8)
    assert matmul > memory
    assert GPU.prefill_s(prompts) == pytest.approx(0.001 + matmul + attention, rel=1e-12)
    # ~0.25 s for an 8k prompt on one H100: the figure docs/simulator.md states.
    assert 0.2 < GPU.prefill_s([(0, 8192)]) < 0.3


def test_a_short_prefill_is_bound_by_reading_the_weights() -> None:
    memory = GPU.weight_bytes / (3.35e12 * 0.8)
    attention = GPU.attention_flops(0, 16) / (989.4e12 * 0.45)
    assert GPU.prefill_s([(0, 16)]) == pytest.approx(0.001 + memory + attention, rel=1e-12)


def test_decode_step_reads_weights_and_every_context_token() -> None:
    for batch, context in [(1, 1000), (32, 400_000), (200, 50_000)]:
        memory = (GPU.weight_bytes + 131_072 * context) / (3.35e12 * 0.8)
        matmul = 2 * (GPU.block_params + GPU.head_params) * batch / (989.4e12 * 0.55)
        expected = 0.001 + max(memory, matmul)
        assert GPU.decode_step_s(batch, context) == pytest.approx(expected, rel=1e-12)
    assert GPU.decode_step_s(0, 0) == 0.0
    # ~7 ms for one short sequence, ~26 ms with a full KV cache (docs/simulator.md).
    assert 0.006 < GPU.decode_step_s(1, 1000) < 0.008
    assert 0.025 < GPU.decode_step_s(32, GPU.kv_capacity_tokens) < 0.028


def test_a_prompt_chunk_beside_the_batch_adds_its_tokens_and_attention() -> None:
    alone = GPU.decode_step_s(4, 10_000)
    with_chunk = GPU.decode_step_s(4, 10_000, (512, 2560))
    memory = (GPU.weight_bytes + 131_072 * 10_000) / (3.35e12 * 0.8)
    matmul = 2 * (GPU.block_params * (4 + 2048) + GPU.head_params * 4) / (989.4e12 * 0.55)
    attention = GPU.attention_flops(512, 2560) / (989.4e12 * 0.45)
    assert with_chunk == pytest.approx(0.001 + max(memory, matmul) + attention, rel=1e-12)
    assert with_chunk > alone


def test_kv_capacity_in_tokens() -> None:
    assert GPU.kv_capacity_tokens == 52 * GIB // 131_072 == 425_984


def test_links_by_tier() -> None:
    links = LinkModel()
    assert [links.bandwidth(t) / 1e9 for t in Tier] == [400, 400, 40, 20, 5]
    one_gb = 10**9
    assert links.transfer_s(Tier.SAME_RACK, one_gb) == pytest.approx(20e-6 + 1 / 40)
    assert [LinkModel.uses_nvlink(t) for t in Tier] == [True, True, False, False, False]
    with pytest.raises(ValueError, match="same_zone"):
        LinkModel(same_zone_gb_s=0)
    with pytest.raises(ValueError, match="latency_s"):
        LinkModel(latency_s=(0.0,))


def test_calibration_file_overrides_named_fields(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"gpu": {"gemm_efficiency": 0.4}, "links": {"latency_s": [0] * 5}}))
    cal = load_calibration(path)
    assert cal.gpu.gemm_efficiency == 0.4 and cal.gpu.hbm_bytes_s == 3.35e12
    assert cal.links.latency_s == (0, 0, 0, 0, 0)
    assert load_calibration("") == load_calibration(None)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"gpu": {"warp_speed": 9}}', "unknown calibration"),
        ('{"gpu": {"gemm_efficiency": 1.5}}', "fraction of peak"),
        ('{"gpu": {"layers": "32"}}', "must be a number"),
        ('{"disk": {}}', "keys"),
        ("not json", "not JSON"),
    ],
)
def test_bad_calibration_files_are_refused(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_calibration(path)


def test_a_missing_calibration_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_calibration(tmp_path / "nope.json")
