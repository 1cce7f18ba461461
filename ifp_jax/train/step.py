"""The train step: loss, gradient accumulation over micro-batches, NaN guard, typed metrics.

loss = weighted next-token cross-entropy (normalised by the global number of loss tokens)
     + distill.weight * the same weighting of the top-k KL to a teacher   [with distill.teacher]
     + pruning.balance_weight * balance_loss(lambda)      [soft mode only; departure from paper]

The balance loss is a per-micro-batch mean; with A micro-batches each adds 1/A of it, so the
objective does not depend on how a global batch is split.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ifp_jax import batch as batch_lib
from ifp_jax import metric
from ifp_jax.config import ExperimentConfig
from ifp_jax.metric import Average, Sum
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.mask_stats import mask_statistics
from ifp_jax.model.soft_topk import balance_loss
from ifp_jax.train.loss import output_losses
from ifp_jax.train.state import TrainState

# Batch keys the step consumes from the input pipeline (everything else stays on the host),
# and the teacher's, computed on device when distilling (ifp_jax/batch.py).
STEP_KEYS = batch_lib.keys("step")
TEACHER_KEYS = batch_lib.keys("step", source="teacher")


def temperature_at(step: jax.Array, cfg: ExperimentConfig) -> jax.Array:
    """Geometric anneal from temperature_start to temperature_end, then constant."""
    p = cfg.pruning
    frac = jnp.clip(step / max(p.temperature_anneal_steps, 1), 0.0, 1.0)
    return p.temperature_start * (p.temperature_end / p.temperature_start) ** frac


def _token_losses(params, model: IFPModel, cfg: ExperimentConfig, batch: dict, temperature):
    """(per-token CE [B, T], per-token KL to the teacher [B, T] or None, model output) with
    whole or chunked logits; the KL when the batch carries teacher arrays (train/teacher.py)."""
    out = model.apply({"params": params}, batch, mode=cfg.pruning.mode, temperature=temperature,
                      train=True, return_hidden=cfg.train.logits_chunk_len > 0)
    teacher = tuple(batch[k] for k in TEACHER_KEYS) if TEACHER_KEYS[0] in batch else None
    ce, kl = output_losses(out, params, cfg, batch["decoder_target_tokens"], model.dtype, teacher)
    return ce, kl, out


def _microbatch_loss(params, model: IFPModel, cfg: ExperimentConfig, batch: dict, *,
                     temperature: jax.Array, total_weight: jax.Array, num_tasks: int):
    """(loss, {name: Metric}) of one micro-batch; the CE part is normalised globally."""
    ce, kl, out = _token_losses(params, model, cfg, batch, temperature)
    weights = batch["decoder_loss_weights"]
    ce = ce * weights  # [B, T]
    loss = ce.sum() / total_weight
    metrics = {
        "loss": Average(ce.sum(), weights.sum()),
        "task_loss": Average(jax.ops.segment_sum(ce.sum(1), batch["task_id"], num_tasks),
                             jax.ops.segment_sum(weights.sum(1), batch["task_id"], num_tasks)),
        "data/predictor_truncated": Sum(batch["predictor_truncated"].sum().astype(jnp.float32)),
        "data/decoder_truncated": Sum(batch["decoder_truncated"].sum().astype(jnp.float32)),
    }
    if kl is not None:
        kl = (kl * weights).sum()
        loss = loss + cfg.distill.weight * kl / total_weight
        metrics["distill_kl"] = Average(kl, weights.sum())
    if cfg.pruning.mode == "soft" and cfg.pruning.balance_weight > 0:
        bal = balance_loss(out.lam, cfg.pruning.keep_k)
        loss = loss + cfg.pruning.balance_weight * bal / cfg.optimizer.grad_accum_steps
        metrics["balance_loss"] = Average.of(bal)
    if out.mask is not None:
        metrics.update(mask_statistics(out.mask, out.lam, batch["task_id"], num_tasks,
                                       cfg.pruning.keep_k))
    return loss, metrics


def make_train_step(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation,
                    num_tasks: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns step(state, batch) -> (state, {name: Metric}). Not jitted (train/compiled.py
    compiles it with the state's shardings)."""
    accum = cfg.optimizer.grad_accum_steps
    grad_fn = jax.grad(_microbatch_loss, has_aux=True)

    def gradients(params, batch, temperature, total_weight):
        def of(mb):  # (grads, metrics) of one micro-batch
            return grad_fn(params, model, cfg, mb, temperature=temperature,
                           total_weight=total_weight, num_tasks=num_tasks)

        if accum == 1:  # no scan, no zero-initialised accumulators
            return of(batch)
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

        def body(carry, mb):
            grads, sums = carry
            g, m = of(mb)
            return (jax.tree_util.tree_map(jnp.add, grads, g), metric.merge(sums, m)), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: of(first))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (grads, sums), _ = jax.lax.scan(body, zeros, micro)
        return grads, sums

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        temperature = temperature_at(state.step, cfg)
        total_weight = jnp.maximum(batch["decoder_loss_weights"].sum(), 1.0)
        grads, metrics = gradients(state.params, batch, temperature, total_weight)
        grad_norm = optax.global_norm(grads)
        loss = metrics["loss"].total / total_weight
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
        metrics.update({"grad_norm": Average.of(grad_norm), "temperature": Average.of(temperature),
                        "nonfinite_steps": Sum(1.0 - finite.astype(jnp.float32))})
        return new_state, metrics

    return step
