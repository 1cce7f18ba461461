"""FFN masks [B, L, F] for a batch of prompts, inside jit: how evaluation chooses its masks.

  per-input  the predictor reads the example's own prompt (the run's pruning mode)
  per-task   the predictor reads each task's instruction text once (`per_task_masks`); every
             example of the task uses that one mask, picked by batch['task_index']
  static     the run's learned input-independent mask (pruning mode 'static')
  griffin    training-free: the LLM's own top-k FFN units by activation over the prompt
             (GRIFFIN, `kv_decoder.griffin_scores`); any run, dense ones included
  dense      no mask: the whole LLM
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np

from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.infer.generate import prompt_only_inputs
from ifp_jax.infer.kv_decoder import griffin_scores
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.soft_topk import topk_indicator
from ifp_jax.selection.prompt import predictor_tokens

MASKS = ("per-input", "per-task", "static", "griffin", "dense")


def griffin_mask(model: IFPModel, decoder_params: Any, batch: dict) -> jax.Array:
    """[B, L, F] 0/1: per layer the keep_k units GRIFFIN scores highest on each prompt (the
    decoder input up to the first loss-weighted position)."""
    inputs, start = prompt_only_inputs(batch["decoder_input_tokens"],
                                       batch["decoder_loss_weights"])
    scores = griffin_scores(decoder_params, model.model_cfg, inputs, start + 1, model.dtype)
    return topk_indicator(scores, model.pruning_cfg.keep_k)


def batch_mask(model: IFPModel, *, mode: str, temperature: float, params: Any, batch: dict,
               mask_table: jax.Array | None = None) -> jax.Array | None:
    """The eval mask [B, L, F] of a batch (None in dense mode; traceable).

    mask_table [n_tasks, L, F]: rows picked by batch['task_index'] [B]; else mode 'griffin': the
    LLM scores its own units on the prompt; else the predictor (or static scores) select through
    `IFPModel.select` with the run's eval mask."""
    if mask_table is not None:
        return mask_table[batch["task_index"]]
    if mode == "griffin":
        return griffin_mask(model, params["decoder"], batch)
    mask, _, _ = model.apply({"params": params}, batch, mode=mode, temperature=temperature,
                             train=False, method=IFPModel.select)
    return mask


def per_task_masks(model: IFPModel, params: Any, cfg: ExperimentConfig, *,
                   instructions: Iterable[str], mode: str | None = None) -> jax.Array:
    """[n_tasks, L, F]: row t is the mask the predictor selects from instruction text t alone
    (the run's pruning mode and eval mask), computed once per task. `instructions` is read only
    after the mode is checked (a lazy iterable's errors come second)."""
    from ifp_jax.vocab.seqio_vocab import get_vocabulary
    mode = mode or cfg.pruning.mode
    if mode not in ("soft", "hard"):
        raise ConfigError(f"per-task masks need a run whose predictor selects units (pruning.mode "
                          f"soft or hard), not {mode!r}")
    instructions = list(instructions)
    vocab = get_vocabulary(cfg.data.predictor_vocabulary)
    tokens = np.concatenate([predictor_tokens(vocab, text, cfg.predictor.max_prompt_len)
                             for text in instructions])
    batch = {"predictor_tokens": tokens,
             "decoder_input_tokens": np.zeros((len(instructions), 1), np.int32)}
    select = jax.jit(lambda p, b: model.apply({"params": p}, b, mode=mode,
                                              temperature=cfg.pruning.temperature_end,
                                              train=False, method=IFPModel.select)[0])
    return jax.device_get(select(params, batch))
