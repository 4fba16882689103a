"""One decoder for the Llama family: Llama 2/3, Mistral, Qwen2 and Qwen3.

The differences are config flags: q/k/v biases (Qwen2, or `attention_bias`), per-head q/k
RMSNorm (Qwen3), llama3 RoPE scaling, and a sliding window. Tokens are flat (`[T, ...]`,
no batch dimension); `AttentionMetadata` says which sequence each belongs to.

q/k/v and gate/up are fused into single matrices (fewer, larger matmuls); the loader fills
them from the separate Hugging Face tensors through `checkpoint_targets()`.

The residual stream is carried beside each layer's output, so every norm after the first
adds and normalises in one step (`RMSNorm.add_and_norm`: one Triton kernel with the TRITON
backend); the sums are the same additions as `hidden = hidden + ...`, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kvferry.kernels import rmsnorm_ref

from ..attention import AttentionBackend, AttentionMetadata, attention_forward
from .model_config import ModelConfig

_Norm = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
_AddNorm = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
]


class RMSNorm(nn.Module):
    """transformers' RMSNorm (`kernels/rmsnorm_ref.py` has the formula); `kernel` runs the
    Triton kernels (`kernels/rmsnorm.py`) instead of the torch reference."""

    def __init__(self, size: int, eps: float, *, kernel: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self._norm, self._add_norm = _norm_ops(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.weight, self.eps)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual)"""
        return self._add_norm(x, residual, self.weight, self.eps)


def _norm_ops(kernel: bool) -> tuple[_Norm, _AddNorm]:
    if not kernel:
        return rmsnorm_ref.rms_norm, rmsnorm_ref.fused_add_rms_norm
    # NOTE: imported only here: triton is needed only with the Triton backend.
    from kvferry.kernels import rmsnorm

    return rmsnorm.rms_norm, rmsnorm.fused_add_rms_norm


class RotaryEmbedding(nn.Module):
    """cos/sin for every position up to `max_position_embeddings`, looked up per token."""

    cos_cache: torch.Tensor  # [max_pos, D]
    sin_cache: torch.Tensor  # [max_pos, D]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        shape = (config.max_position_embeddings, config.head_dim)
        self.register_buffer("cos_cache", torch.empty(shape), persistent=False)
        self.register_buffer("sin_cache", torch.empty(shape), persistent=False)
        self.reset_cache()

    def reset_cache(self) -> None:
        """(Re)compute the tables, in float32, then store them in the buffers' dtype.

        NOTE: transformers computes cos/sin in float32 and casts them to the activation
        dtype, so a cache cast to the model dtype (by `.to(dtype)`) gives identical values.
        """
        device = self.cos_cache.device
        inv_freq = _inv_freq(self.config, device)  # [D/2]
        positions = torch.arange(
            self.config.max_position_embeddings, device=device, dtype=torch.float32
        )
        freqs = torch.outer(positions, inv_freq)  # [max_pos, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_pos, D]
        self.cos_cache.copy_(emb.cos())
        self.sin_cache.copy_(emb.sin())

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [T, 1, D] each, broadcast over heads
        return self.cos_cache[positions][:, None, :], self.sin_cache[positions][:, None, :]


def _inv_freq(config: ModelConfig, device: torch.device) -> torch.Tensor:
    dim = config.head_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device, torch.float32) / dim
    inv_freq = 1.0 / (config.rope_theta**exponent)  # [D/2]
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # HF `rotate_half`
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.sliding_window = config.sliding_window
        self.backend = backend
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_proj_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden]
        cos: torch.Tensor,  # [T, 1, D]
        sin: torch.Tensor,  # [T, 1, D]
        kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # [T, (H + 2 Hkv) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # Qwen3: per head, before RoPE
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = attention_forward(
            self.backend, q, k, v, kv_cache, meta, self.scale, sliding_window=self.sliding_window
        )  # [T, H, D]
        projected: torch.Tensor = self.o_proj(out.view(num_tokens, self.q_size))  # [T, hidden]
        return projected

    def checkpoint_targets(self, prefix: str) -> dict[str, torch.Tensor]:
        q, kv = self.q_size, self.kv_size
        rows = {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, None)}
        targets = {}
        for name, part in rows.items():
            targets[f"{prefix}.{name}.weight"] = self.qkv_proj.weight.data[part]
            if self.qkv_proj.bias is not None:
                targets[f"{prefix}.{name}.bias"] = self.qkv_proj.bias.data[part]
        targets[f"{prefix}.o_proj.weight"] = self.o_proj.weight.data
        if self.o_proj.bias is not None:
            targets[f"{prefix}.o_proj.bias"] = self.o_proj.bias.data
        if self.q_norm is not None and self.k_norm is not None:
            targets[f"{prefix}.q_norm.weight"] = self.q_norm.weight.data
            targets[f"{prefix}.k_norm.weight"] = self.k_norm.weight.data
        return targets


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [T, I] each
        down: torch.Tensor = self.down_proj(F.silu(gate) * up)  # [T, hidden]
        return down


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, backend: AttentionBackend, fused_norm: bool) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, kernel=fused_norm)
        self.self_attn = Attention(config, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, kernel=fused_norm)
        self.mlp = MLP(config)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden]: the previous layer's MLP output (or embeddings)
        residual: torch.Tensor | None,  # [T, hidden]: the stream before it; None: layer 0
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (MLP output, residual stream before it)
        # The same additions, in transformers' order, as `h = h + attn(norm(h))` then
        # `h = h + mlp(norm(h))`: float32 results agree to rounding.
        if residual is None:
            residual, normed = hidden, self.input_layernorm(hidden)
        else:
            normed, residual = self.input_layernorm.add_and_norm(hidden, residual)
        attn = self.self_attn(normed, cos, sin, kv_cache, meta)
        normed, residual = self.post_attention_layernorm.add_and_norm(attn, residual)
        out: torch.Tensor = self.mlp(normed)
        return out, residual

    def checkpoint_targets(self, prefix: str) -> dict[str, torch.Tensor]:
        gate_up = self.mlp.gate_up_proj.weight.data  # [2 I, hidden]: gate rows, then up rows
        inter = gate_up.shape[0] // 2
        return {
            **self.self_attn.checkpoint_targets(f"{prefix}.self_attn"),
            f"{prefix}.mlp.gate_proj.weight": gate_up[:inter],
            f"{prefix}.mlp.up_proj.weight": gate_up[inter:],
            f"{prefix}.mlp.down_proj.weight": self.mlp.down_proj.weight.data,
            f"{prefix}.input_layernorm.weight": self.input_layernorm.weight.data,
            f"{prefix}.post_attention_layernorm.weight": self.post_attention_layernorm.weight.data,
        }


class LlamaForCausalLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        attention_backend: AttentionBackend = AttentionBackend.TORCH,
        *,
        fused_norm: bool | None = None,
    ) -> None:
        """`fused_norm`: the Triton RMSNorm kernels for the hidden-state norms; by default
        exactly with the TRITON attention backend (one kernel choice for the model)."""
        super().__init__()
        if fused_norm is None:
            fused_norm = attention_backend is AttentionBackend.TRITON
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config, attention_backend, fused_norm)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernel=fused_norm)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[torch.Tensor],  # per layer [2, NB, BS, Hkv, D]
        meta: AttentionMetadata,
        on_layer_done: Callable[[int], None] | None = None,
    ) -> torch.Tensor:  # [T, hidden], final norm applied
        """`on_layer_done(i)` runs as soon as layer i has written its KV (KV export)."""
        hidden: torch.Tensor = self.embed_tokens(input_ids)  # [T, hidden]
        residual: torch.Tensor | None = None
        cos, sin = self.rotary_emb(positions)  # [T, 1, D] each
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            hidden, residual = layer(hidden, residual, cos, sin, kv_cache, meta)
            if on_layer_done is not None:
                on_layer_done(i)
        if residual is None:  # no layers
            residual = torch.zeros_like(hidden)
        normed, _ = self.norm.add_and_norm(hidden, residual)
        return normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32, computed in the model dtype."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def checkpoint_targets(self) -> dict[str, torch.Tensor]:
        """Hugging Face tensor name -> the view of our parameter it fills.

        Fused matrices are split into row slices, so loading is a `copy_` per tensor.
        `lm_head.weight` is absent when embeddings are tied.
        """
        targets = {"model.embed_tokens.weight": self.embed_tokens.weight.data}
        for i, layer in enumerate(cast(list[DecoderLayer], list(self.layers))):
            targets.update(layer.checkpoint_targets(f"model.layers.{i}"))
        targets["model.norm.weight"] = self.norm.weight.data
        if self.lm_head is not None:
            targets["lm_head.weight"] = self.lm_head.weight.data
        return targets
