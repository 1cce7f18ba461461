"""The jitted train step: loss, gradient accumulation, NaN guard, metrics.

loss = weighted next-token cross-entropy (normalised by the global number of loss tokens)
     + pruning.balance_weight * balance_loss(lambda)      [soft mode only; departure from paper]
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ifp_jax.config import ExperimentConfig
from ifp_jax.eval.mask_stats import mask_statistics
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.soft_topk import balance_loss
from ifp_jax.train.state import TrainState

# Batch keys the step consumes (everything else stays on the host).
STEP_KEYS = ("predictor_tokens", "decoder_input_tokens", "decoder_target_tokens",
             "decoder_loss_weights", "task_id", "predictor_truncated", "decoder_truncated")


def temperature_at(step: jax.Array, cfg: ExperimentConfig) -> jax.Array:
    """Geometric anneal from temperature_start to temperature_end, then constant."""
    p = cfg.pruning
    frac = jnp.clip(step / max(p.temperature_anneal_steps, 1), 0.0, 1.0)
    return p.temperature_start * (p.temperature_end / p.temperature_start) ** frac


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[B, T, V] f32 logits, [B, T] int targets -> [B, T] cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _microbatch_loss(params, model: IFPModel, cfg: ExperimentConfig, batch: dict,
                     temperature: jax.Array, total_weight: jax.Array, num_tasks: int):
    mode = cfg.pruning.mode
    out = model.apply({"params": params}, batch, mode=mode, temperature=temperature, train=True)
    weights = batch["decoder_loss_weights"]
    ce = token_cross_entropy(out.logits, batch["decoder_target_tokens"]) * weights  # [B, T]
    ce_sum = ce.sum()
    loss = ce_sum / total_weight
    metrics = {
        "ce_sum": ce_sum,
        "weight_sum": weights.sum(),
        "task_ce_sum": jax.ops.segment_sum(ce.sum(1), batch["task_id"], num_tasks),
        "task_weight_sum": jax.ops.segment_sum(weights.sum(1), batch["task_id"], num_tasks),
        "predictor_truncated": batch["predictor_truncated"].sum(),
        "decoder_truncated": batch["decoder_truncated"].sum(),
    }
    if mode == "soft" and cfg.pruning.balance_weight > 0:
        bal = balance_loss(out.lam, cfg.pruning.keep_k)
        loss = loss + cfg.pruning.balance_weight * bal / cfg.optimizer.grad_accum_steps
        metrics["balance_loss_sum"] = bal
    if out.mask is not None:
        metrics.update(mask_statistics(out.mask, out.lam, batch["task_id"], num_tasks,
                                       cfg.pruning.keep_k))
    return loss, metrics


def make_train_step(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation,
                    num_tasks: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns step(state, batch) -> (state, metric sums). Not jitted (the caller jits)."""
    accum = cfg.optimizer.grad_accum_steps

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        temperature = temperature_at(state.step, cfg)
        total_weight = jnp.maximum(batch["decoder_loss_weights"].sum(), 1.0)
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
        grad_fn = jax.grad(_microbatch_loss, has_aux=True)

        def body(carry, mb):
            grads, sums = carry
            g, m = grad_fn(state.params, model, cfg, mb, temperature, total_weight, num_tasks)
            grads = jax.tree_util.tree_map(jnp.add, grads, g)
            sums = jax.tree_util.tree_map(jnp.add, sums, m)
            return (grads, sums), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        metric_shapes = jax.eval_shape(
            lambda: _microbatch_loss(state.params, model, cfg, first, temperature,
                                     total_weight, num_tasks)[1])
        zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params),
                 jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
        (grads, sums), _ = jax.lax.scan(body, zeros, micro)

        grad_norm = optax.global_norm(grads)
        loss = sums["ce_sum"] / total_weight
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # NaN/inf guard: a non-finite step leaves params and optimizer state untouched; the
        # host loop then skips or stops according to train.nan_policy.
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = TrainState(step=state.step + 1,  # batches consumed, skipped or not
                               params=keep(new_params, state.params),
                               opt_state=keep(new_opt, state.opt_state))
        sums.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                    temperature=temperature)
        return new_state, sums

    return step
