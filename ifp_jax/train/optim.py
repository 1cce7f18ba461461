"""AdamW with warm-up + cosine decay, separate learning rates for the LLM and the predictor.

Parameters are labelled by their top-level module: `decoder` is the LLM; `predictor` and the
static-baseline scores `static_scores` are the selection mechanism and get `lr_predictor`.
Global-norm clipping is applied to the whole gradient before the per-group AdamW.
"""

from __future__ import annotations

import jax
import optax

from ifp_jax.config import OptimizerConfig

LLM = "llm"
PREDICTOR = "predictor"


def lr_schedule(peak: float, cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * cfg.final_lr_fraction)


def param_labels(params: dict) -> dict:
    """Same tree as params with 'llm' / 'predictor' leaves."""
    return {name: jax.tree_util.tree_map(lambda _, n=name: LLM if n == "decoder" else PREDICTOR, sub)
            for name, sub in params.items()}


def _decay_mask(params: dict) -> dict:
    # Decay matrices only: norms and 1-D scales keep their value (Llama/T5X practice).
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    def adamw(peak):
        return optax.adamw(lr_schedule(peak, cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                           weight_decay=cfg.weight_decay, mask=_decay_mask)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm),
        optax.multi_transform({LLM: adamw(cfg.lr_llm), PREDICTOR: adamw(cfg.lr_predictor)},
                              param_labels),
    )
