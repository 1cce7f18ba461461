"""Selection scores that start from the LLM's own FFN activations (pruning.init_scores).

A fresh predictor scores units with noise, so its first masks keep a random k of every FFN.
On a pretrained LLM that is a broken model to train from: at k = F/2, SmolLM2-135M's held-out
loss on Python text goes from 2.9 (dense) to 9.9 with a random half, against 4.2 with the half
it uses most. With 'activation', the predictor head's bias [L, F] and the static scores start
at scale * z, where z is the per-layer z-score of log mean |silu(gate) * up| of each unit over
the stage's first training tokens: the first masks keep the most used units, and the
input-dependent part of the predictor (its head's kernel) learns from there. Logs, because a
unit's mean activation spans orders of magnitude; a z-score, so one scale fits every layer.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ifp_jax.config import ExperimentConfig, ModelConfig
from ifp_jax.hf import imported
from ifp_jax.infer.kv_decoder import prefill
from ifp_jax.train.metrics import print_primary
from ifp_jax.train.state import TrainState, at_path, with_path

# What the scores replace: every selection mode's fresh scores.
SCORE_PATHS = (("predictor", "head_out", "bias"), ("static_scores",))


def row_activation_sums(decoder_params: Any, cfg: ModelConfig, tokens: jax.Array,
                        lengths: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """Per row, layer and unit, sum over the row's real tokens of |silu(gate) * up|: [B, L, F]
    f32. tokens [B, T] right-padded, lengths [B] (positions >= length are padding, left out)."""
    t = tokens.shape[1]
    valid = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.float32)  # [B, T]
    sums = [None] * cfg.n_layers

    def probe(layer, hidden):  # hidden [B, T, F], before any mask
        sums[layer] = jnp.einsum("btf,bt->bf", jnp.abs(hidden.astype(jnp.float32)), valid)

    prefill(decoder_params, cfg, tokens, jnp.maximum(lengths, 1), mask=None, cache_len=t,
            dtype=dtype, ffn_probe=probe)
    return jnp.stack(sums, axis=1)


def activation_sums(decoder_params: Any, cfg: ModelConfig, tokens: jax.Array,
                    lengths: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """row_activation_sums summed over the batch: [L, F] f32."""
    return row_activation_sums(decoder_params, cfg, tokens, lengths, dtype).sum(axis=0)


def scores_from_activations(mean_abs: jax.Array | np.ndarray, scale: float):
    """[..., F] mean |activation| -> scale * z-score over F of its log, f32 (a layer whose
    units are all alike gets 0s). A numpy input is computed on the host in float64 and gives
    numpy; a jax array (traced or not) gives a jax array."""
    xp, dtype = (jnp, jnp.float32) if isinstance(mean_abs, jax.Array) else (np, np.float64)
    logs = xp.log(xp.maximum(xp.asarray(mean_abs, dtype), 1e-30))
    spread = logs.std(axis=-1, keepdims=True)
    z = (logs - logs.mean(axis=-1, keepdims=True)) / xp.where(spread > 0, spread, 1.0)
    return (scale * z).astype(np.float32)


def batch_lengths(loss_weights: jax.Array) -> jax.Array:
    """[B, T] -> [B]: a training row's real inputs end at its last loss position (CPT windows and
    SFT examples alike; what follows is padding)."""
    t = loss_weights.shape[1]
    last = t - 1 - jnp.argmax((loss_weights > 0)[:, ::-1], axis=1)
    return jnp.where(jnp.any(loss_weights > 0, axis=1), last + 1, 0).astype(jnp.int32)


def skip_reason(cfg: ExperimentConfig) -> str | None:
    """Why a fresh run with pruning.init_scores='activation' leaves its scores as they are, or
    None when it sets them."""
    if cfg.pruning.mode == "dense":
        return "pruning.mode=dense selects nothing"
    source = cfg.train.init_predictor_from
    if source and not imported.is_import_dir(source):
        return f"the predictor and static scores come from {source}"
    return None


def initialise_scores(state: TrainState, cfg: ExperimentConfig, mesh: Mesh, step_dtype: Any,
                      batches, to_global) -> TrainState:
    """`state` with its selection scores set from the LLM's activations on the stage's first
    ceil(init_scores_tokens / tokens per batch) batches; `batches` is rewound after, so training
    reads the same data as without this. to_global(host batch) -> global arrays (every process
    reads its own rows; the sums are over the global batch)."""
    p = cfg.pruning
    per_batch = cfg.data.global_batch_size * cfg.data.seq_len
    n = max(1, math.ceil(p.init_scores_tokens / per_batch))

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, PartitionSpec()))
    def sums_of(decoder_params, batch):
        lengths = batch_lengths(batch["decoder_loss_weights"])
        return (activation_sums(decoder_params, cfg.model, batch["decoder_input_tokens"],
                                lengths, step_dtype), lengths.sum())

    start = batches.get_state()
    total, count = 0.0, 0
    try:
        for _ in range(n):
            s, c = sums_of(state.params["decoder"], to_global(next(batches)))
            total, count = total + np.asarray(jax.device_get(s)), count + int(c)
    finally:
        batches.set_state(start)
    scores = scores_from_activations(total / max(count, 1), p.init_scores_scale)
    params = state.params
    for path in SCORE_PATHS:
        params = with_path(params, path, _placed_like(scores, at_path(params, path)))
    print_primary(f"[ifp] selection scores initialised from the LLM's FFN activations over "
                  f"{count} tokens ({n} batch(es); scale {p.init_scores_scale}): the first masks "
                  f"keep each layer's most used units")
    return state.replace(params=params)


def _placed_like(value: np.ndarray, old: jax.Array) -> jax.Array:
    """`value` (the same on every process) as an array of `old`'s dtype and sharding; each
    process places its own shards."""
    value = value.astype(old.dtype)
    return jax.make_array_from_callback(old.shape, old.sharding, lambda index: value[index])
