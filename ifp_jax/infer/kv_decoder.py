"""KV-cache inference over the Decoder's params: prefill a batch of prompts, then one token a step.

Functional (params in, arrays out) and numerically the Decoder's own forward pass: every piece is
the training module applied to one layer's params (RMSNorm, Projection, MaskedMLP, nn.Embed via
`.apply`; RoPE from model/layers.py; attention from model/attention.py and
jax.nn.dot_product_attention). Only attention is split in two: `prefill` runs the prompts
causally and stores their K/V; `decode_step` appends one token per row and attends over the
cache up to that row's length, so the prompt is never recomputed.

Layers are a Python loop over per-layer weights inside the jit, not a lax.scan over the stacked
ones: XLA:CPU copies each dynamic slice of a stacked weight before its matmul, so a scanned step
reads every weight twice and writes it once (measured: about 2x slower at batch 1). For the same
reason the cache is one [B, S, Hkv, hd] array per layer.

Cache (`KVCache`): k, v tuples of L arrays [B, S, Hkv, hd] in the compute dtype; lengths [B]
int32 = tokens held per row = the position of the row's next token. Prompts are right-padded and
each row's positions count from 0; a row's padding K/V sit at positions >= its length, are never
attended (length mask) and are overwritten by that row's generated tokens.

The FFN mask [B, L, F] multiplies the hidden units exactly as MaskedMLP does (a different mask per
row; None = dense). An exported small model is a dense model with d_ffn = k: the same code runs
dense, masked and exported models.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import ModelConfig
from ifp_jax.model.attention import (causal_segment_mask, splash_attention, splash_supported,
                                     xla_attention)
from ifp_jax.model.layers import MaskedMLP, Projection, RMSNorm, apply_rope, rope_cos_sin

_MATMUL_LEAVES = ("kernel", "embedding")


class KVCache(NamedTuple):
    k: tuple[jax.Array, ...]  # L x [B, S, Hkv, hd]
    v: tuple[jax.Array, ...]  # L x [B, S, Hkv, hd]
    lengths: jax.Array  # [B] int32


def inference_params(params: Any, cfg: ModelConfig, dtype: Any = jnp.float32) -> dict:
    """Decoder params (boxed or not; stacked 'layers' or 'layers_0..') -> 'layers' as a tuple of
    per-layer dicts, matmul weights in `dtype`.

    Casting up front gives the same numbers as the modules' own per-matmul casts (they cast the
    f32 kernel to the compute dtype before every product) and halves a bf16 step's weight reads.
    Idempotent; call it once outside a per-token loop (unstacking copies every layer).
    """
    params = dict(nn.meta.unbox(params))
    if "layers" in params and not isinstance(params["layers"], (tuple, list)):
        stacked = params.pop("layers")
        params["layers"] = tuple(jax.tree.map(lambda a, i=i: a[i], stacked)
                                 for i in range(cfg.n_layers))
    elif "layers" not in params:
        params["layers"] = tuple(params.pop(f"layers_{i}") for i in range(cfg.n_layers))
    else:
        params["layers"] = tuple(params["layers"])

    def cast(path, leaf):
        return leaf.astype(dtype) if getattr(path[-1], "key", None) in _MATMUL_LEAVES else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def _embed(params: dict, cfg: ModelConfig, dtype) -> tuple[nn.Embed, dict]:
    """The Decoder's nn.Embed and its variables (lookup, and `attend` when tied)."""
    return (nn.Embed(cfg.padded_vocab_size, cfg.d_model, dtype=dtype),
            {"params": params["embed_tokens"]})


def _logits(params: dict, cfg: ModelConfig, x: jax.Array, dtype) -> jax.Array:
    """Final norm + LM head: x [B, D] -> logits [B, V] f32 (the Decoder's, for one position)."""
    x = RMSNorm(cfg.norm_eps, dtype).apply({"params": params["norm"]}, x)
    if cfg.tie_embeddings:
        module, variables = _embed(params, cfg, dtype)
        logits = module.apply(variables, x, method=nn.Embed.attend)
    else:
        logits = Projection((cfg.padded_vocab_size,), (), dtype=dtype).apply(
            {"params": params["lm_head"]}, x)
    return logits[..., :cfg.vocab_size].astype(jnp.float32)


def _qkv(lp: dict, cfg: ModelConfig, x: jax.Array, cos, sin, dtype):
    """One layer's pre-norm and projections: x [B, T, D] -> q [B,T,H,hd], k, v [B,T,Hkv,hd]."""
    h = RMSNorm(cfg.norm_eps, dtype).apply({"params": lp["input_layernorm"]}, x)
    proj = lambda name, heads: Projection((heads, cfg.head_dim), (), dtype=dtype).apply(
        {"params": lp["self_attn"][name]}, h)
    q = apply_rope(proj("q_proj", cfg.n_heads), cos, sin)
    k = apply_rope(proj("k_proj", cfg.n_kv_heads), cos, sin)
    return q, k, proj("v_proj", cfg.n_kv_heads)


def _finish_layer(lp: dict, cfg: ModelConfig, x: jax.Array, attn: jax.Array,
                  mask_row: jax.Array | None, dtype) -> jax.Array:
    """Output projection, residual, then the masked FFN (MaskedMLP itself) and its residual."""
    x = x + Projection((cfg.d_model,), (), n_in=2, dtype=dtype).apply(
        {"params": lp["self_attn"]["o_proj"]}, attn)
    h = RMSNorm(cfg.norm_eps, dtype).apply({"params": lp["post_attention_layernorm"]}, x)
    d_ffn = lp["mlp"]["gate_proj"]["kernel"].shape[-1]  # k for an exported model
    return x + MaskedMLP(d_ffn, dtype).apply({"params": lp["mlp"]}, h, mask_row)


def _layer_mask(mask: jax.Array | None, i: int) -> jax.Array | None:
    return None if mask is None else mask[:, i]  # [B, L, F] -> [B, F]


def prefill(params: Any, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array,
            mask: jax.Array | None, cache_len: int, dtype: Any = jnp.float32
            ) -> tuple[jax.Array, KVCache]:
    """Runs right-padded prompts and fills the cache.

    Args:
      tokens: [B, T] int, row b's prompt in tokens[b, :lengths[b]] (lengths >= 1).
      mask: [B, L, F] FFN mask or None (dense).
      cache_len: S >= T + tokens to generate (static).
    Returns: logits [B, V] f32 of each row's last prompt token, and the cache.
    """
    p = inference_params(params, cfg, dtype)
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    segment_ids = jnp.ones((b, t), jnp.int32)
    # The model's kernel where the prompt length tiles into splash blocks (TPU), else xla.
    splash = cfg.attention == "splash" and splash_supported(t)
    # Causal masking alone keeps padding out: a row's padding follows all its real tokens.
    attn_mask = None if splash else causal_segment_mask(segment_ids)
    module, variables = _embed(p, cfg, dtype)
    x = module.apply(variables, tokens)
    pad = lambda kv: jnp.pad(kv, ((0, 0), (0, cache_len - t), (0, 0), (0, 0)))
    ks, vs = [], []
    for i, lp in enumerate(p["layers"]):
        q, k, v = _qkv(lp, cfg, x, cos, sin, dtype)
        if splash:
            out = splash_attention(q, k, v, segment_ids)
        else:
            out = xla_attention(q, k, v, attn_mask)
        x = _finish_layer(lp, cfg, x, out, _layer_mask(mask, i), dtype)
        ks.append(pad(k))
        vs.append(pad(v))
    last = x[jnp.arange(b), lengths - 1]  # [B, D]
    return (_logits(p, cfg, last, dtype),
            KVCache(tuple(ks), tuple(vs), lengths.astype(jnp.int32)))


def decode_step(params: Any, cfg: ModelConfig, token: jax.Array, cache: KVCache,
                mask: jax.Array | None, dtype: Any = jnp.float32) -> tuple[jax.Array, KVCache]:
    """Appends token [B] at each row's own position -> (its logits [B, V] f32, the cache).

    Per layer: this token's K/V are written into the cache at (row, lengths[row]), then the
    token attends to positions 0..lengths[row] of its row. Each weight is read once per step.
    Writes past the cache are dropped: the caller sizes S to the prompt plus the tokens it
    generates.
    """
    p = inference_params(params, cfg, dtype)
    b = token.shape[0]
    pos = cache.lengths
    rows = jnp.arange(b)
    cos, sin = rope_cos_sin(pos[:, None], cfg.head_dim, cfg.rope_theta)  # [B, 1, hd]
    module, variables = _embed(p, cfg, dtype)
    x = module.apply(variables, token[:, None])  # [B, 1, D]
    ks, vs = [], []
    for i, lp in enumerate(p["layers"]):
        q, k, v = _qkv(lp, cfg, x, cos, sin, dtype)
        # Row scatters into the loop-carried cache: in place, no copy of the cache per step.
        ck = cache.k[i].at[rows, pos].set(k[:, 0])
        cv = cache.v[i].at[rows, pos].set(v[:, 0])
        out = jax.nn.dot_product_attention(q, ck, cv, key_value_seq_lengths=pos + 1,
                                           implementation="xla")
        x = _finish_layer(lp, cfg, x, out, _layer_mask(mask, i), dtype)
        ks.append(ck)
        vs.append(cv)
    return _logits(p, cfg, x[:, 0], dtype), KVCache(tuple(ks), tuple(vs), pos + 1)
