"""The physics of the simulated cluster: how long a forward pass takes on one GPU (a
roofline: time = overhead + max(bytes / HBM bandwidth, matmul FLOPs / tensor throughput)
+ attention FLOPs / attention throughput) and how long KV takes to cross a link of each
topology tier.

Defaults: one H100 SXM5 80 GB per worker serving Llama-3.1-8B in bf16; every figure and
its source is in docs/simulator.md. A JSON calibration file (`--calibration`) overrides
any field, e.g. with step times fitted to the engine benchmark on real hardware.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvferry.topology import Tier

GB = 1e9
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One worker's GPU and model: the step-time roofline's inputs."""

    # -- the model: Llama-3.1-8B (Llama-3-8B architecture, 128k context), bf16 ----------
    layers: int = 32
    hidden: int = 4096
    """Query width (32 heads x 128): the attention FLOPs scale with it."""
    block_params: float = 6.98e9
    """Parameters in the 32 transformer blocks (the matmuls every token runs through)."""
    head_params: float = 0.525e9
    """The untied LM head (128,256 x 4,096): run once per sampled token."""
    weight_bytes: float = 15.0e9
    """Weights read per forward pass: blocks + LM head in bf16 (the embedding table is
    only gathered, 0.5 GB of the 16.06 GB checkpoint)."""
    kv_bytes_per_token: int = 131_072
    """K and V, 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB."""
    # -- the GPU: H100 SXM5 80 GB ---------------------------------------------------------
    peak_flops: float = 989.4e12
    """Dense bf16 tensor-core FLOP/s (datasheet; 1,979 is with sparsity)."""
    hbm_bytes_s: float = 3.35e12
    """HBM3 bandwidth (datasheet)."""
    gemm_efficiency: float = 0.55
    """Fraction of peak the matmuls reach in a large prefill batch."""
    attention_efficiency: float = 0.45
    """Fraction of peak causal flash attention reaches in prefill."""
    hbm_efficiency: float = 0.8
    """Fraction of HBM bandwidth a decode step's weight and KV reads reach."""
    step_overhead_s: float = 0.001
    """Fixed cost of one forward pass: launches, scheduling, sampling."""
    kv_cache_gib: float = 52.0
    """KV memory per worker: 90% of 79.6 GiB, minus 15 GiB of weights and ~4.7 GiB of
    activations and CUDA graphs."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(
                    f"calibration field {f.name} must be > 0, got {getattr(self, f.name)}"
                )
        for name in ("gemm_efficiency", "attention_efficiency", "hbm_efficiency"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} is a fraction of peak: must be <= 1")

    @property
    def kv_capacity_tokens(self) -> int:
        return int(self.kv_cache_gib * GIB) // self.kv_bytes_per_token

    def attention_flops(self, cached: int, total: int) -> float:
        """Causal attention of positions [cached, total) over their prefixes: QK^T and AV,
        2 FLOPs per multiply-add, 4 * hidden * (p + 1) per layer at position p."""
        return 2.0 * self.layers * self.hidden * (total * (total + 1) - cached * (cached + 1))

    def _matmul_s(self, tokens: int, sampled: int) -> float:
        flops = 2.0 * (self.block_params * tokens + self.head_params * sampled)
        return flops / (self.peak_flops * self.gemm_efficiency)

    def _attention_s(self, flops: float) -> float:
        return flops / (self.peak_flops * self.attention_efficiency)

    def _memory_s(self, kv_tokens_read: int) -> float:
        nbytes = self.weight_bytes + self.kv_bytes_per_token * kv_tokens_read
        return nbytes / (self.hbm_bytes_s * self.hbm_efficiency)

    def prefill_s(self, prompts: list[tuple[int, int]]) -> float:
        """One prefill pass over `prompts` = [(cached tokens, prompt tokens)]: each prompt
        computes its uncached positions and samples one token."""
        new = sum(total - cached for cached, total in prompts)
        attn = sum(self.attention_flops(cached, total) for cached, total in prompts)
        read = sum(cached for cached, _ in prompts)
        return (
            self.step_overhead_s
            + max(self._memory_s(read), self._matmul_s(new, len(prompts)))
            + self._attention_s(attn)
        )

    def decode_step_s(
        self, batch: int, context_tokens: int, chunk: tuple[int, int] | None = None
    ) -> float:
        """One decode step: `batch` sequences, `context_tokens` of KV read in all, plus an
        optional chunk of a local prompt = (tokens before it, tokens after it)."""
        tokens, attn = batch, 0.0
        if chunk is not None:
            done, upto = chunk
            tokens += upto - done
            attn = self.attention_flops(done, upto)
        if tokens == 0:
            return 0.0
        memory = self._memory_s(context_tokens)
        return (
            self.step_overhead_s
            + max(memory, self._matmul_s(tokens, batch))
            + self._attention_s(attn)
        )


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Effective bandwidth (GB/s, one direction, one flow) and setup latency (s) of a KV
    push, by the topology tier between the two workers."""

    same_node_gb_s: float = 400.0
    """NVLink 4 through NVSwitch: 450 GB/s per direction per H100, ~90% reached."""
    same_nvlink_domain_gb_s: float = 400.0
    """A multi-node NVLink domain (NVLink Switch System): the same per-GPU NVLink."""
    same_rack_gb_s: float = 40.0
    """GPUDirect RDMA over the GPU's own 400 Gb/s NIC (50 GB/s line rate)."""
    same_zone_gb_s: float = 20.0
    """Across racks: the same NIC through a 2:1 oversubscribed spine."""
    elsewhere_gb_s: float = 5.0
    """Across zones/regions: a 40 Gb/s-class share of the inter-zone link."""
    latency_s: tuple[float, ...] = field(default=(10e-6, 10e-6, 20e-6, 50e-6, 1e-3))
    """Per-push setup/round trip by tier, nearest first."""

    def __post_init__(self) -> None:
        for tier in Tier:
            if not self.bandwidth(tier) > 0:
                raise ValueError(f"link bandwidth for {tier.label} must be > 0 GB/s")
        if len(self.latency_s) != len(Tier) or min(self.latency_s) < 0:
            raise ValueError(f"latency_s needs {len(Tier)} values >= 0, nearest tier first")

    def bandwidth(self, tier: Tier) -> float:
        """Bytes/s."""
        return float(getattr(self, f"{tier.label}_gb_s")) * GB

    def transfer_s(self, tier: Tier, nbytes: int) -> float:
        return self.latency_s[tier] + nbytes / self.bandwidth(tier)

    @staticmethod
    def uses_nvlink(tier: Tier) -> bool:
        """NVLink tiers use the GPUs' NVLink ports; the others their NIC."""
        return tier <= Tier.SAME_NVLINK_DOMAIN


@dataclass(frozen=True, slots=True)
class Calibration:
    gpu: GpuModel = field(default_factory=GpuModel)
    links: LinkModel = field(default_factory=LinkModel)


def load_calibration(path: str | Path | None) -> Calibration:
    """Defaults, overridden by a JSON object `{"gpu": {...}, "links": {...}}` whose keys
    are `GpuModel` / `LinkModel` field names."""
    if not path:
        return Calibration()
    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"calibration file {str(path)!r} not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"calibration file {str(path)!r} is not JSON: {err}") from None
    if not isinstance(raw, dict) or set(raw) - {"gpu", "links"}:
        raise ValueError('a calibration file is a JSON object with keys "gpu" and/or "links"')
    return Calibration(
        gpu=_override(GpuModel(), raw.get("gpu", {}), "gpu"),
        links=_override(LinkModel(), raw.get("links", {}), "links"),
    )


def _override(base: Any, values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f'calibration "{where}" must be a JSON object')
    known = {f.name for f in dataclasses.fields(base)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f'unknown calibration "{where}" fields {sorted(unknown)}; known: {sorted(known)}'
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    for k, v in fixed.items():
        if k == "latency_s":
            if not isinstance(v, tuple) or not all(isinstance(x, int | float) for x in v):
                raise ValueError(f'calibration "{where}.latency_s" must be a list of numbers')
        elif isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise ValueError(f'calibration "{where}.{k}" must be a number, got {v!r}')
    return dataclasses.replace(base, **fixed)
