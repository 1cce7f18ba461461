"""KV-cache inference over the Decoder's params: prefill a batch of prompts, then one token a step.

Functional (params in, arrays out) and numerically the Decoder's own forward pass: the same
products, norms (RMSNorm, Projection, nn.Embed via `.apply`), RoPE (model/layers.py) and
attention (model/attention.py for the prompt), with MaskedMLP's masked FFN written out over fused
kernels (`inference_params`). Only attention is split in two: `prefill` runs the prompts
causally and stores their K/V; `decode_step` appends one token per row and attends over the
cache up to that row's length, so the prompt is never recomputed.

Layers are a Python loop over per-layer weights inside the jit, not a lax.scan over the stacked
ones: XLA:CPU copies each dynamic slice of a stacked weight before its matmul, so a scanned step
reads every weight twice and writes it once (measured: about 2x slower at batch 1). For the same
reason the cache is one array per layer. Its layout makes decoding's two attention products
plain batched matmuls over B*Hkv with no unit axis for XLA to reshape away; with the
[B, S, Hkv, hd] layout XLA fused each cache update twice (into the carried cache and into
attention's reshaped operand) and copied the whole cache for both, in every layer of every step
(2.4 of 9 ms per token at 50M).

Cache (`KVCache`): k tuple of L arrays [B*Hkv, hd, S], v of L arrays [B*Hkv, S, hd] (row b's
KV head j at index b*Hkv + j), in the compute dtype; lengths [B]
int32 = tokens held per row = the position of the row's next token. Prompts are right-padded and
each row's positions count from 0; a row's padding K/V sit at positions >= its length, are never
attended (length mask) and are overwritten by that row's generated tokens.

The FFN mask [B, L, F] multiplies the hidden units exactly as MaskedMLP does (a different mask per
row; None = dense). An exported small model is a dense model with d_ffn = k: the same code runs
dense, masked and exported models.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import ModelConfig
from ifp_jax.model.attention import (causal_segment_mask, splash_attention, splash_supported,
                                     xla_attention)
from ifp_jax.model.layers import (Projection, RMSNorm, apply_rope, gather_down_rows,
                                  rope_cos_sin)

_MATMUL_LEAVES = ("kernel", "embedding")


class KVCache(NamedTuple):
    k: tuple[jax.Array, ...]  # L x [B*Hkv, hd, S]
    v: tuple[jax.Array, ...]  # L x [B*Hkv, S, hd]
    lengths: jax.Array  # [B] int32


def inference_params(params: Any, cfg: ModelConfig, dtype: Any = jnp.float32) -> dict:
    """Decoder params (boxed or not; stacked 'layers' or 'layers_0..') -> 'layers' as a tuple of
    per-layer dicts, matmul weights in `dtype`, q/k/v and gate/up kernels fused.

    Per layer: self_attn {'qkv': {'kernel': [D, (H + 2 Hkv) hd]}, 'o_proj'} and mlp
    {'gate_up': {'kernel': [2F, D]}, 'down_proj': {'kernel': [F, D]}} (see `fuse_mlp`). At batch
    1 a decode step is a chain of matrix-vector products, each paying a fixed cost on top of its
    bytes (a 1 MB one streams at half the rate of a 3 MB one here), so fewer, wider products are
    faster.
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
        # jnp, not numpy: a restored export holds numpy arrays, and a jitted step copies every
        # numpy argument into a fresh device buffer on every call. At 135M that was 220 MB
        # (the tied embedding, the down kernels) faulted in per decode step: 11-15 tok/s
        # instead of 31 (tests/test_generate.py checks every leaf is a jax.Array).
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if getattr(path[-1], "key", None) in _MATMUL_LEAVES else leaf

    params = jax.tree_util.tree_map_with_path(cast, params)
    params["layers"] = tuple({**lp, "self_attn": _fuse_attention(lp["self_attn"]),
                              "mlp": fuse_mlp(lp["mlp"])} for lp in params["layers"])
    return params


def _fuse_attention(attn: dict) -> dict:
    """{'q_proj': [D, H, hd], 'k_proj', 'v_proj': [D, Hkv, hd], 'o_proj'} -> {'qkv': [D, (H + 2
    Hkv) hd], 'o_proj'} (already fused: unchanged)."""
    if "qkv" in attn:
        return attn
    flat = lambda name: attn[name]["kernel"].reshape(attn[name]["kernel"].shape[0], -1)
    return {"qkv": {"kernel": jnp.concatenate([flat("q_proj"), flat("k_proj"), flat("v_proj")],
                                              axis=1)},
            "o_proj": attn["o_proj"]}


def fuse_mlp(mlp: dict) -> dict:
    """MaskedMLP params {'gate_proj': [D, F], 'up_proj': [D, F], 'down_proj': [F, D]} ->
    {'gate_up': {'kernel': [2F, D]} (gate units first), 'down_proj'} (fused: unchanged).

    Units as rows, like W_down: selecting FFN units (serving's loading step) is then a row gather
    of contiguous D-vectors from both kernels. Gathering columns of the [D, 2F] kernel was
    element by element on XLA:CPU (200M model: 38-53 ms, most of the loading step); products
    with the unit-major kernel (contracting its minor axis) run as fast at batch 1 and in prefill.
    """
    if "gate_up" in mlp:
        return mlp
    return {"gate_up": {"kernel": jnp.concatenate([mlp["gate_proj"]["kernel"],
                                                   mlp["up_proj"]["kernel"]], axis=1).T},
            "down_proj": mlp["down_proj"]}


def gather_fused_mlp(mlp: dict, keep_idx: jax.Array, scale: jax.Array | None = None) -> dict:
    """`gather_mlp_units` on a fused MLP: the kept k units' gate and up rows [2k, D] and down rows
    [k, D] (times scale [k], when given); the same arrays as fusing the gathered MaskedMLP."""
    f = mlp["down_proj"]["kernel"].shape[0]
    rows = jnp.concatenate([keep_idx, keep_idx + f])  # gate units, then up units
    return {"gate_up": {"kernel": mlp["gate_up"]["kernel"][rows]},
            "down_proj": {"kernel": gather_down_rows(mlp["down_proj"]["kernel"], keep_idx,
                                                     scale)}}


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


def _matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """x [..., K] @ kernel [K, N] as Projection computes it (operands in dtype)."""
    return jnp.dot(x.astype(dtype), kernel.astype(dtype))


def _qkv(lp: dict, cfg: ModelConfig, x: jax.Array, cos, sin, dtype):
    """One layer's pre-norm and projections: x [B, T, D] -> q [B,T,H,hd], k, v [B,T,Hkv,hd]."""
    h = RMSNorm(cfg.norm_eps, dtype).apply({"params": lp["input_layernorm"]}, x)
    qkv = _matmul(h, lp["self_attn"]["qkv"]["kernel"], dtype)
    nq, nkv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    heads = lambda a: a.reshape(*a.shape[:-1], -1, cfg.head_dim)
    q = apply_rope(heads(qkv[..., :nq]), cos, sin)
    k = apply_rope(heads(qkv[..., nq:nq + nkv]), cos, sin)
    return q, k, heads(qkv[..., nq + nkv:])


def _finish_layer(lp: dict, cfg: ModelConfig, x: jax.Array, attn: jax.Array, *,
                  mask_row: jax.Array | None, dtype, probe: Callable | None = None) -> jax.Array:
    """Output projection, residual, then MaskedMLP's masked FFN and its residual:
    down(silu(gate) * up * mask), over the fused gate/up kernel. probe, if given, is called
    with the unmasked hidden units silu(gate) * up [B, T, F]."""
    x = x + Projection((cfg.d_model,), (), n_in=2, dtype=dtype).apply(
        {"params": lp["self_attn"]["o_proj"]}, attn)
    h = RMSNorm(cfg.norm_eps, dtype).apply({"params": lp["post_attention_layernorm"]}, x)
    gate_up = jnp.einsum("...d,fd->...f", h.astype(dtype),
                         lp["mlp"]["gate_up"]["kernel"].astype(dtype))  # units-as-rows kernel
    gate, up = jnp.split(gate_up, 2, axis=-1)
    hidden = nn.silu(gate) * up
    if probe is not None:
        probe(hidden)
    if mask_row is not None:
        hidden = hidden * mask_row[:, None, :].astype(hidden.dtype)
    return x + _matmul(hidden, lp["mlp"]["down_proj"]["kernel"], dtype)


def _layer_mask(mask: jax.Array | None, i: int) -> jax.Array | None:
    return None if mask is None else mask[:, i]  # [B, L, F] -> [B, F]


def _write_position(cache: jax.Array, new: jax.Array, pos: jax.Array, axis: int) -> jax.Array:
    """Writes row b's new entries into its Hkv slices of cache [B*Hkv, ...] at position pos[b].

    new: [B*Hkv, ...] with size 1 on `axis` (the position axis, 1 or 2). One scatter, run in
    place (checked: no copy of a cache in the compiled decode loop). Positions past the cache
    are clamped to its last slot; callers size it so that none are.
    """
    hkv = new.shape[0] // pos.shape[0]
    rows = jnp.arange(new.shape[0])
    at = jnp.repeat(pos, hkv)  # [B*Hkv]
    if axis == 1:  # [N, S, hd]
        return cache.at[rows, at].set(new[:, 0], mode="clip")
    return cache.at[rows, :, at].set(new[:, :, 0], mode="clip")  # [N, hd, S]


def _attend_cache(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array) -> jax.Array:
    """One query per row over its cache: q [B, 1, H, hd], k [B*Hkv, hd, S], v [B*Hkv, S, hd],
    lengths [B] (keys 0..lengths-1 are attended) -> [B, 1, H, hd]. Grouped-query: query head h
    reads KV head h // (H / Hkv), as in model/attention.py. Scores and softmax in f32."""
    b, _, h, hd = q.shape
    bk, s = k.shape[0], k.shape[2]
    qg = q.reshape(bk, h * b // bk, hd)  # [B*Hkv, G, hd]
    scores = jnp.einsum("ngd,nds->ngs", qg, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, bk // b, -1, s) * (hd ** -0.5)
    valid = jnp.arange(s)[None, :] < lengths[:, None]  # [B, S]
    scores = jnp.where(valid[:, None, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(bk, -1, s)
    out = jnp.einsum("ngs,nsd->ngd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).reshape(b, 1, h, hd)


def prefill(params: Any, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, *,
            mask: jax.Array | None, cache_len: int, dtype: Any = jnp.float32,
            ffn_probe: Callable | None = None) -> tuple[jax.Array, KVCache]:
    """Runs right-padded prompts and fills the cache.

    Args:
      tokens: [B, T] int, row b's prompt in tokens[b, :lengths[b]] (lengths >= 1).
      mask: [B, L, F] FFN mask or None (dense).
      cache_len: S >= T + tokens to generate (static).
      ffn_probe: called as ffn_probe(layer, hidden [B, T, F]) with each layer's FFN hidden
        units before the mask (padding positions included).
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
    # K [B, T, Hkv, hd] -> [B, Hkv, hd, S], V -> [B, Hkv, S, hd]; zeros after the prompt.
    grow = lambda a, axis: jnp.pad(a, [(0, cache_len - t if d == axis else 0)
                                       for d in range(4)])
    ks, vs = [], []
    for i, lp in enumerate(p["layers"]):
        q, k, v = _qkv(lp, cfg, x, cos, sin, dtype)
        if splash:
            out = splash_attention(q, k, v, segment_ids)
        else:
            out = xla_attention(q, k, v, attn_mask)
        probe = None if ffn_probe is None else functools.partial(ffn_probe, i)
        x = _finish_layer(lp, cfg, x, out, mask_row=_layer_mask(mask, i), dtype=dtype, probe=probe)
        ks.append(grow(k.transpose(0, 2, 3, 1), 3).reshape(-1, cfg.head_dim, cache_len))
        vs.append(grow(v.transpose(0, 2, 1, 3), 2).reshape(-1, cache_len, cfg.head_dim))
    last = x[jnp.arange(b), lengths - 1]  # [B, D]
    return (_logits(p, cfg, last, dtype),
            KVCache(tuple(ks), tuple(vs), lengths.astype(jnp.int32)))


def decode_step(params: Any, cfg: ModelConfig, token: jax.Array, cache: KVCache, *,
                mask: jax.Array | None, dtype: Any = jnp.float32) -> tuple[jax.Array, KVCache]:
    """Appends token [B] at each row's own position -> (its logits [B, V] f32, the cache).

    Per layer: this token's K/V are written into the cache at (row, lengths[row]), then the
    token attends to positions 0..lengths[row] of its row. Each weight is read once per step.
    Writes past the cache land in its last slot: the caller sizes S to the prompt plus the
    tokens it generates.
    """
    p = inference_params(params, cfg, dtype)
    pos = cache.lengths
    cos, sin = rope_cos_sin(pos[:, None], cfg.head_dim, cfg.rope_theta)  # [B, 1, hd]
    module, variables = _embed(p, cfg, dtype)
    x = module.apply(variables, token[:, None])  # [B, 1, D]
    ks, vs = [], []
    for i, lp in enumerate(p["layers"]):
        q, k, v = _qkv(lp, cfg, x, cos, sin, dtype)
        # Row scatters into the loop-carried cache: in place, no copy of the cache per step.
        ck = _write_position(cache.k[i], k.reshape(-1, cfg.head_dim, 1), pos, axis=2)
        cv = _write_position(cache.v[i], v.reshape(-1, 1, cfg.head_dim), pos, axis=1)
        out = _attend_cache(q, ck, cv, pos + 1)
        x = _finish_layer(lp, cfg, x, out, mask_row=_layer_mask(mask, i), dtype=dtype)
        ks.append(ck)
        vs.append(cv)
    return _logits(p, cfg, x[:, 0], dtype), KVCache(tuple(ks), tuple(vs), pos + 1)


def griffin_scores(params: Any, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array,
                   dtype: Any = jnp.float32) -> jax.Array:
    """GRIFFIN's training-free FFN unit scores (Dong et al., 2024) of each prompt: [B, L, F] f32.

    The dense LLM reads the prompt; per layer, each prompt token's hidden units
    silu(gate) * up are scaled to unit l2 norm over F, and unit i scores the l2 norm over the
    prompt's tokens of its scaled activations. The top-k per layer are GRIFFIN's selection.
    tokens [B, T] right-padded, lengths [B] (positions >= length are padding and ignored).
    """
    t = tokens.shape[1]
    valid = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.float32)  # [B, T]
    scores = [None] * cfg.n_layers

    def probe(layer, hidden):
        h = hidden.astype(jnp.float32)
        h = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
        scores[layer] = jnp.sqrt(jnp.einsum("btf,bt->bf", h * h, valid))

    prefill(params, cfg, tokens, lengths, mask=None, cache_len=t, dtype=dtype, ffn_probe=probe)
    return jnp.stack(scores, axis=1)
