"""Fitting the predictor to each prompt's own activation scores before joint training
(pruning.fit_predictor_steps).

With init_scores='activation' the first masks are one mask for every input: the head's bias
holds the LLM's average activation scores and its kernel is small and random. Joint training
from there moves them little: the kept units start at lambda ~0.95, where SoftTopK passes
almost no gradient, so a predictor can end as a static mask in all but name
(docs/smollm2.md). This stage trains the predictor alone, for N steps on the stage's first
batches, to regress each training row's own scores: init_scores_scale x the per-layer z-score
of log mean |silu(gate) * up| over that row's real tokens (the LLM's GRIFFIN-like selection of
the row, as scores). Joint training then starts from masks the predictor guesses per prompt.
The LLM is untouched, and the data are rewound, so joint training reads what it would have read.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig, ModelConfig
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.soft_topk import topk_indicator
from ifp_jax.train.init_scores import batch_lengths, row_activation_sums, scores_from_activations
from ifp_jax.train.metrics import print_primary
from ifp_jax.train.state import TrainState

# The batch fields a fitting step reads.
FIT_KEYS = ("predictor_tokens", "decoder_input_tokens", "decoder_loss_weights")


def row_scores(decoder_params: Any, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array,
               scale: float, dtype: Any = jnp.float32) -> jax.Array:
    """Each row's own selection scores: [B, L, F] f32, scale x the per-layer z-score of log mean
    |activation| over the row's real tokens (tokens [B, T] right-padded, lengths [B])."""
    sums = row_activation_sums(decoder_params, cfg, tokens, lengths, dtype)
    mean = sums / jnp.maximum(lengths, 1).astype(jnp.float32)[:, None, None]
    return scores_from_activations(mean, scale)


def topk_agreement(scores: jax.Array, targets: jax.Array, keep_k: int) -> jax.Array:
    """Mean over rows and layers of |top-k(scores) & top-k(targets)| / k (1 = the same
    masks), [B, L, F] each -> scalar."""
    both = topk_indicator(scores, keep_k) * topk_indicator(targets, keep_k)
    return both.sum(-1).mean() / keep_k


def make_fit_step(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation):
    """step(params, opt_state, batch) -> (predictor params, opt_state, {mse, agreement}).

    The loss is the mean squared error of the predictor's scores against the rows' own scores,
    over rows with real tokens; `agreement` is topk_agreement before the update."""
    p = cfg.pruning

    def predict(pred_params, params, tokens):
        return model.apply({"params": {**params, "predictor": pred_params}}, tokens,
                           method=lambda m, t: m.predictor(t))

    def loss_fn(pred_params, params, batch, targets, real):
        scores = predict(pred_params, params, batch["predictor_tokens"])
        per_row = jnp.mean(jnp.square(scores - targets), axis=(1, 2))  # [B]
        return (per_row * real).sum() / jnp.maximum(real.sum(), 1.0), scores

    def step(params, opt_state, batch):
        lengths = batch_lengths(batch["decoder_loss_weights"])
        targets = row_scores(params["decoder"], cfg.model, batch["decoder_input_tokens"],
                             lengths, p.init_scores_scale, model.dtype)
        real = (lengths > 0).astype(jnp.float32)
        (mse, scores), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params["predictor"], params, batch, targets, real)
        updates, opt_state = tx.update(grads, opt_state, params["predictor"])
        return (optax.apply_updates(params["predictor"], updates), opt_state,
                {"mse": mse, "agreement": topk_agreement(scores, targets, p.keep_k)})

    return step


def fit_predictor(state: TrainState, cfg: ExperimentConfig, model: IFPModel, mesh: Mesh,
                  batches, to_global) -> TrainState:
    """`state` with its predictor fitted for pruning.fit_predictor_steps steps (Adam at
    optimizer.lr_predictor, the run's gradient clipping) on the stage's first batches, which
    are rewound after. to_global(host batch) -> the FIT_KEYS as global arrays."""
    n = cfg.pruning.fit_predictor_steps
    tx = optax.chain(optax.clip_by_global_norm(cfg.optimizer.grad_clip_norm),
                     optax.adam(cfg.optimizer.lr_predictor, b1=cfg.optimizer.b1,
                                b2=cfg.optimizer.b2))
    params = state.params
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        opt_state = jax.jit(tx.init)(params["predictor"])
        # The fitted predictor keeps the state's shardings: the compiled train step takes
        # exactly those.
        sharding_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
        step = jax.jit(make_fit_step(model, cfg, tx), donate_argnums=1, out_shardings=(
            sharding_of(params["predictor"]), sharding_of(opt_state), shd.replicated(mesh)))
        start, t0 = batches.get_state(), time.time()
        first = last = None
        every = max(1, n // 10)
        try:
            for i in range(1, n + 1):
                predictor, opt_state, m = step(params, opt_state, to_global(next(batches)))
                params = {**params, "predictor": predictor}
                if i == 1 or i % every == 0 or i == n:
                    m = {k: float(v) for k, v in jax.device_get(m).items()}
                    first, last = first or m, m
                    if i == 1:  # the rate leaves out the first step, which compiled
                        t1 = time.time()
                        pace = f"compiled and ran in {t1 - t0:.1f}s"
                    else:
                        rate = (i - 1) / max(time.time() - t1, 1e-9)
                        pace = f"{rate:.1f} steps/s | ETA {(n - i) / rate:.0f}s"
                    print_primary(f"[ifp] fitting the predictor to each prompt's activation "
                                  f"scores: step {i}/{n}, mse {m['mse']:.3f}, top-k agreement "
                                  f"{m['agreement']:.3f} | {pace}")
        finally:
            batches.set_state(start)
    print_primary(f"[ifp] predictor fitted in {n} steps ({time.time() - t0:.0f}s): mse "
                  f"{first['mse']:.3f} -> {last['mse']:.3f}, top-k agreement with each row's own "
                  f"units {first['agreement']:.3f} -> {last['agreement']:.3f} (measured on each "
                  f"step's batch before its update)")
    return state.replace(params=params)


def skip_reason(cfg: ExperimentConfig) -> str | None:
    """Why pruning.fit_predictor_steps > 0 fits nothing in this run, or None."""
    if cfg.pruning.mode not in ("soft", "hard"):
        return f"pruning.mode={cfg.pruning.mode} has no predictor to fit"
    return None
