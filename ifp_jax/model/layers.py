"""Llama-family building blocks: RMSNorm, RoPE, grouped-query attention, the masked SwiGLU FFN.

Every parameter carries logical axis names (mapped to mesh axes by `ifp_jax.sharding.LOGICAL_RULES`);
params are f32, matmuls run in the module's compute `dtype`, norms and softmax in f32.
Parameter names follow Hugging Face Llama (q_proj, gate_proj, ...) so weight conversion is a
reshape, not a rename table.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import ModelConfig
from ifp_jax.model.attention import splash_attention, xla_attention

Dtype = Any


def _kernel(names: tuple[str, ...], std: float):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


class Projection(nn.Module):
    """Bias-free linear map contracting the last `n_in` axes of x into `features`.

    Like nn.DenseGeneral, but the kernel is initialised in its final (unflattened) shape, so its
    logical partitioning applies to the real array (DenseGeneral boxes the flattened 2-D kernel).
    """

    features: tuple[int, ...]
    names: tuple[str, ...]  # logical names of the kernel [*in_axes, *features]
    n_in: int = 1
    dtype: Dtype = jnp.float32
    init_std: float = 0.02  # ModelConfig.init_std

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = tuple(x.shape[-self.n_in:]) + tuple(self.features)
        kernel = self.param("kernel", _kernel(self.names, self.init_std), shape, jnp.float32)
        # As one 2-D matmul: XLA:CPU runs the weight-gradient of a [B, T, D] x [D, F] product
        # (contracting B and T) about 2x slower than the same product on [B*T, D].
        lead = x.shape[:x.ndim - self.n_in]
        y = jnp.dot(x.reshape(-1, math.prod(shape[:self.n_in])).astype(self.dtype),
                    kernel.reshape(-1, math.prod(self.features)).astype(self.dtype))
        return y.reshape(lead + tuple(self.features))


class RMSNorm(nn.Module):
    """x / rms(x) * scale, computed in f32; returns the compute dtype."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float):
    """positions [B, T] -> cos, sin [B, T, head_dim] (HF Llama layout: frequencies repeated)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, hd]; rotate_half convention of HF Llama (first half / second half pairs)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query attention with RoPE."""

    cfg: ModelConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 mask: jax.Array | None) -> jax.Array:
        """x [B, T, D], cos/sin [B, T, head_dim], segment_ids [B, T], mask [B, 1, T, T] bool
        (the xla kernel's; None for splash) -> [B, T, D]."""
        c = self.cfg
        dense = lambda feats, names, name: Projection(feats, names, dtype=self.dtype, name=name,
                                                      init_std=c.init_std)
        q = dense((c.n_heads, c.head_dim), ("embed", "heads", "head_dim"), "q_proj")(x)
        k = dense((c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), "k_proj")(x)
        v = dense((c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), "v_proj")(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        # GQA without materialising repeated K/V; softmax in f32 inside.
        if c.attention == "splash":
            out = splash_attention(q, k, v, segment_ids)
        else:
            out = xla_attention(q, k, v, mask)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        return Projection((c.d_model,), ("heads", "head_dim", "embed"), n_in=2, dtype=self.dtype,
                          init_std=c.init_std, name="o_proj")(out)


class MaskedMLP(nn.Module):
    """SwiGLU FFN whose hidden units are multiplied by a per-example mask (the masked-FFN layer).

    down( silu(x W_gate) * (x W_up) * mask[:, None, :] ). A 0/1 mask with k ones equals the FFN
    of the k gathered units (`gather_mlp_units`); a lambda-scaled mask equals gathering with
    rows of W_down scaled by lambda.
    """

    d_ffn: int
    dtype: Dtype = jnp.float32
    init_std: float = 0.02  # ModelConfig.init_std

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B, T, D], mask [B, F] or None (dense) -> [B, T, D]."""
        d = x.shape[-1]
        dense = lambda feats, names, name: Projection((feats,), names, dtype=self.dtype, name=name,
                                                      init_std=self.init_std)
        gate = dense(self.d_ffn, ("embed", "mlp"), "gate_proj")(x)
        up = dense(self.d_ffn, ("embed", "mlp"), "up_proj")(x)
        h = nn.silu(gate) * up
        if mask is not None:
            h = h * mask[:, None, :].astype(h.dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return dense(d, ("mlp", "embed"), "down_proj")(h)


def gather_mlp_units(mlp_params: dict, keep_idx: jax.Array, scale: jax.Array | None = None) -> dict:
    """Params of a dense MaskedMLP with d_ffn = k from the kept units of a larger one.

    Args:
      mlp_params: {'gate_proj': {'kernel': [D, F]}, 'up_proj': {...}, 'down_proj': {'kernel': [F, D]}}.
      keep_idx: [k] int unit indices.
      scale: optional [k] per-unit scale (lambda), folded into the rows of W_down.
    """
    return {"gate_proj": {"kernel": mlp_params["gate_proj"]["kernel"][:, keep_idx]},
            "up_proj": {"kernel": mlp_params["up_proj"]["kernel"][:, keep_idx]},
            "down_proj": {"kernel": gather_down_rows(mlp_params["down_proj"]["kernel"],
                                                     keep_idx, scale)}}


def gather_down_rows(down: jax.Array, keep_idx: jax.Array,
                     scale: jax.Array | None = None) -> jax.Array:
    """W_down [F, D] -> its kept rows [k, D], each times its unit's scale [k] when given (the
    lambda mask folded in)."""
    down = down[keep_idx]
    return down if scale is None else down * scale[:, None].astype(down.dtype)


class DecoderBlock(nn.Module):
    """Pre-norm attention + masked FFN. Scan-compatible: (x, mask_row) -> (x, None)."""

    cfg: ModelConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_row: jax.Array | None, cos: jax.Array, sin: jax.Array,
                 segment_ids: jax.Array, attn_mask: jax.Array | None):
        c = self.cfg
        h = RMSNorm(c.norm_eps, self.dtype, name="input_layernorm")(x)
        x = x + Attention(c, self.dtype, name="self_attn")(h, cos, sin, segment_ids, attn_mask)
        h = RMSNorm(c.norm_eps, self.dtype, name="post_attention_layernorm")(x)
        x = x + MaskedMLP(c.d_ffn, self.dtype, c.init_std, name="mlp")(h, mask_row)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, None
