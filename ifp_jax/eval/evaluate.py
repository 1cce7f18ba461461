"""Held-out evaluation: per-task exact match with SeqIO's metric functions, plus mask statistics.

For every task of the mixture that has metrics, each held-out example gets an FFN mask, then
greedy decoding with that fixed mask over a KV cache produces the answer, which is detokenised and
scored by the task's own `metric_fns`. Where the mask comes from:

  per-input  the predictor reads the example's own prompt (the run's pruning mode)
  per-task   the predictor reads the task's instruction text once (`skills.task_instruction`);
             every example of the task uses that one mask (PAPER.md §3)
  static     the run's learned input-independent mask (pruning mode 'static')
  griffin    training-free: the LLM's own top-k FFN units by activation over the prompt
             (GRIFFIN, `kv_decoder.griffin_scores`); any run, dense ones included
  dense      no mask: the whole LLM
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from jax.sharding import Mesh

from ifp_jax import metric
from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig
from ifp_jax.data import pipeline, vocab as vocab_lib
from ifp_jax.model.mask_stats import mask_statistics
from ifp_jax.infer.generate import greedy_continuation, prompt_only_inputs
from ifp_jax.infer.kv_decoder import griffin_scores
from ifp_jax.model.soft_topk import topk_indicator
from ifp_jax.model.ifp import IFPModel

EVAL_KEYS = ("predictor_tokens", "decoder_input_tokens", "decoder_loss_weights")


@dataclasses.dataclass
class EvalResult:
    per_task: dict[str, float]  # task -> exact match in [0, 1]
    mask_stats: dict[str, float]
    samples: dict[str, list[tuple[str, str, str]]]  # task -> [(prompt, target, prediction)]
    kept: np.ndarray | None = None  # [N, L, F] bool: units each held-out example kept (masked)
    task_of: np.ndarray | None = None  # [N] index into per_task's tasks

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_task.values()))) if self.per_task else float("nan")


def _decode_text(vocab: seqio.Vocabulary, ids: np.ndarray) -> str:
    ids = list(ids)
    if vocab.eos_id in ids:
        ids = ids[:ids.index(vocab.eos_id)]
    return vocab.decode(ids)


def _exact_match_from_metrics(values: dict) -> float:
    for key in ("exact_match", "accuracy", "sequence_accuracy"):
        if key in values:
            v = float(values[key])
            return v / 100.0 if v > 1.0 else v
    raise ValueError(f"task metrics {sorted(values)} have no exact_match")


MASKS = ("per-input", "per-task", "static", "griffin", "dense")


def make_eval_fn(model: IFPModel, mode: str, temperature: float, num_steps: int):
    """Returns fn(params, batch, mask_table) -> (generated [B, num_steps], mask [B, L, F] or
    zeros).

    mask_table None: the predictor runs once on the prompts (`IFPModel.select`), or for mode
    'griffin' the LLM scores its own units on them; else the masks are mask_table
    [n_tasks, L, F] rows picked by batch['task_index'] [B]. The decoder then
    prefills the prompt and decodes greedily over a KV cache with that mask (none in dense
    mode): the same tokens as recomputing the sequence per token (`greedy_decode_full`,
    tests/test_generate.py).
    """

    def run(params, batch, mask_table):
        inputs, start = prompt_only_inputs(batch["decoder_input_tokens"],
                                           batch["decoder_loss_weights"])
        if mask_table is not None:
            mask = mask_table[batch["task_index"]]
        elif mode == "griffin":
            scores = griffin_scores(params["decoder"], model.model_cfg, inputs, start + 1,
                                    model.dtype)
            mask = topk_indicator(scores, model.pruning_cfg.keep_k)
        else:
            mask, _, _ = model.apply({"params": params}, batch, mode=mode,
                                     temperature=temperature, train=False,
                                     method=IFPModel.select)
        generated = greedy_continuation(params["decoder"], model.model_cfg, inputs, start,
                                        num_steps, mask, model.dtype)
        return generated, (mask if mask is not None else jnp.zeros((1, 1, 1)))

    return run


def per_task_masks(model: IFPModel, params: Any, cfg: ExperimentConfig, task_names: list[str],
                   mode: str | None = None) -> jax.Array:
    """[n_tasks, L, F]: row t is the mask the predictor selects from task t's instruction text
    alone (the run's pruning mode and eval mask), computed once per task."""
    from ifp_jax.data.skills import task_instruction
    from ifp_jax.export.selection import predictor_tokens
    mode = mode or cfg.pruning.mode
    if mode not in ("soft", "hard"):
        from ifp_jax.config import ConfigError
        raise ConfigError(f"per-task masks need a run whose predictor selects units (pruning.mode "
                          f"soft or hard), not {mode!r}")
    vocab = vocab_lib.get_vocabulary(cfg.data.predictor_vocabulary)
    tokens = np.concatenate([predictor_tokens(vocab, task_instruction(name,
                                                                      cfg.data.jsonl_path),
                                              cfg.predictor.max_prompt_len)
                             for name in task_names])
    batch = {"predictor_tokens": tokens,
             "decoder_input_tokens": np.zeros((len(task_names), 1), np.int32)}
    select = jax.jit(lambda p, b: model.apply({"params": p}, b, mode=mode,
                                              temperature=cfg.pruning.temperature_end,
                                              train=False, method=IFPModel.select)[0])
    return jax.device_get(select(params, batch))


def evaluate(model: IFPModel, params: Any, cfg: ExperimentConfig, mesh: Mesh,
             task_names: list[str] | None = None, mode: str | None = None,
             batch_size: int = 256, num_samples: int = 3, per_task: bool = False) -> EvalResult:
    """Exact match per held-out task (all processes compute the same full result).

    mode: the pruning mode that selects masks (default: the run's); per_task: select each
    task's mask once from its instruction text (`per_task_masks`) instead of per example."""
    mode = mode or cfg.pruning.mode
    task_names = task_names if task_names is not None else pipeline.eval_task_names(cfg.data)
    vocab = vocab_lib.get_vocabulary(cfg.data.vocabulary)
    examples = [pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len, name,
                                            cfg.data.eval_examples_per_task)
                for name in task_names]
    arrays = {k: np.concatenate([e[k] for e in examples]) for k in EVAL_KEYS}
    task_of = np.concatenate([np.full(len(e["decoder_loss_weights"]), i, np.int32)
                              for i, e in enumerate(examples)])
    total = len(task_of)
    num_steps = int(arrays["decoder_loss_weights"].sum(1).max())
    n_dev = mesh.devices.size
    batch_size = -(-min(batch_size, total) // n_dev) * n_dev
    padded = -(-total // batch_size) * batch_size
    table = None
    if per_task:
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            table = per_task_masks(model, params, cfg, task_names, mode)
        arrays["task_index"] = task_of
    for k in arrays:  # pad by repeating the last example (its results are dropped)
        arrays[k] = np.concatenate([arrays[k], np.repeat(arrays[k][-1:], padded - total, 0)])

    run = make_eval_fn(model, mode, cfg.pruning.temperature_end, num_steps)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        # Replicated outputs: every process (multi-host) reads the whole result.
        run = jax.jit(run, out_shardings=shd.replicated(mesh))
        gens, masks = [], []
        for s in range(0, padded, batch_size):
            batch = {k: jax.make_array_from_callback(
                (batch_size,) + v.shape[1:], shd.batch_sharding(mesh, v.ndim),
                lambda idx, v=v, s=s: v[s:s + batch_size][idx]) for k, v in arrays.items()}
            g, m = run(params, batch, table)
            gens.append(np.asarray(jax.device_get(g)))
            masks.append(m)
    generated = np.concatenate(gens)[:total]

    per_task, samples, offset = {}, {}, 0
    for name, ex in zip(task_names, examples):
        n = len(ex["decoder_loss_weights"])
        preds = [_decode_text(vocab, row) for row in generated[offset:offset + n]]
        task = seqio.get_mixture_or_task(name)
        values = {}
        for fn in task.metric_fns:
            values.update(fn(list(ex["target_text"]), preds))
        per_task[name] = _exact_match_from_metrics(values)
        samples[name] = list(zip(ex["prompt_text"][:num_samples], ex["target_text"][:num_samples],
                                 preds[:num_samples]))
        offset += n

    stats, kept = {}, None
    if mode != "dense":
        all_masks = jnp.concatenate([jax.device_get(m) for m in masks])[:total]
        stats = metric.compute(mask_statistics(all_masks, None, jnp.asarray(task_of),
                                               len(task_names), cfg.pruning.keep_k))
        kept = np.asarray(all_masks) != 0
    return EvalResult(per_task=per_task, mask_stats=stats, samples=samples, kept=kept,
                      task_of=task_of)
