"""Evaluation: per-task exact match with SeqIO's metric functions, perplexity of text tasks, plus
mask statistics.

Instruction tasks (those with `metric_fns`): each example gets an FFN mask, then greedy decoding
with that fixed mask over a KV cache produces the answer, which is detokenised and scored by the
task's own `metric_fns`. Text tasks (CPT, `metric_fns=[]`): the model's forward with the same mask
gives the training loss's per-token cross-entropy (train/loss.py) on the loss-weighted target
tokens (chunk k+1 after chunks 1..k); perplexity = exp(mean NLL over the task's target tokens).
Examples are the first `DataConfig.eval_examples_per_task` of each task's split ('validation',
held out, by default), run in batches that take the tasks round-robin; with
`DataConfig.eval_max_seconds` no batch starts once that time is up, so every task is scored on
about as many of its first examples, and the result says how many (`examples`, `partial`).
Progress (examples, examples/s, ETA) goes to stderr (eval/progress.py). The masks (per-input,
per-task, static, griffin, dense) are chosen by ifp_jax/selection/batch_masks.py; a text task
has no instruction, so per-task mode gives it per-input masks (the predictor reads chunk k), and
GRIFFIN reads chunks 1..k.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from jax.sharding import Mesh

from ifp_jax import batch as batch_lib
from ifp_jax import metric
from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig
from ifp_jax.data import pipeline
from ifp_jax.data.skills import task_instruction
from ifp_jax.eval.progress import EvalProgress
from ifp_jax.vocab import seqio_vocab as vocab_lib
from ifp_jax.model.mask_stats import mask_statistics
from ifp_jax.infer.generate import NO_EOS, greedy_continuation, prompt_only_inputs
from ifp_jax.selection.batch_masks import batch_mask, per_task_masks
from ifp_jax.model.ifp import IFPModel
from ifp_jax.train.loss import output_cross_entropy

EVAL_KEYS = batch_lib.keys("eval")  # greedy decoding for exact match
NLL_KEYS = batch_lib.keys("nll")  # perplexity of text tasks


@dataclasses.dataclass
class EvalResult:
    per_task: dict[str, float]  # instruction task -> exact match in [0, 1]
    mask_stats: dict[str, float]  # over the instruction tasks' examples
    samples: dict[str, list[tuple[str, str, str]]]  # task -> [(prompt, target, prediction)]
    kept: np.ndarray | None = None  # [N, L, F] bool: units each instruction example kept (masked)
    task_of: np.ndarray | None = None  # [N] index into per_task's tasks
    perplexity: dict[str, float] = dataclasses.field(default_factory=dict)  # text task -> ppl
    examples: dict[str, int] = dataclasses.field(default_factory=dict)  # task -> examples scored
    partial: bool = False  # the time bound stopped it before every example was scored

    @property
    def mean(self) -> float:
        """Mean exact match over the instruction tasks (NaN when there are none)."""
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


def make_eval_fn(model: IFPModel, mode: str, temperature: float, num_steps: int,
                 eos_id: int = NO_EOS, prompt_len: int | None = None):
    """Returns fn(params, batch, mask_table) -> (generated [B, num_steps], mask [B, L, F] or
    zeros).

    The mask comes from `selection.batch_masks.batch_mask`; the decoder then prefills the prompt
    and decodes greedily over a KV cache with that mask (none in dense mode): the same tokens as
    recomputing the sequence per token (`greedy_decode_full`, tests/test_generate.py), up to each
    row's EOS, where the row stops (the batch, once every row has). prompt_len: the longest
    prompt (decoder inputs up to the first loss-weighted position) of every batch: the prefill
    reads that many positions, not the whole sequence.
    """

    def run(params, batch, mask_table):
        inputs, start = prompt_only_inputs(batch["decoder_input_tokens"],
                                           batch["decoder_loss_weights"])
        mask = batch_mask(model, mode=mode, temperature=temperature, params=params,
                          batch=batch, mask_table=mask_table)
        generated, _ = greedy_continuation(params["decoder"], model.model_cfg, inputs, start,
                                           num_steps=num_steps, mask=mask, eos_id=eos_id,
                                           prompt_len=prompt_len, dtype=model.dtype)
        return generated, (mask if mask is not None else jnp.zeros((1, 1, 1)))

    return run


@functools.lru_cache(maxsize=8)
def _jitted(make, *args, mesh: Mesh):
    """One jitted program per (maker, its arguments, mesh), kept across calls: the periodic
    evaluation of a run reuses it instead of tracing and compiling it again every time."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        # Replicated outputs: every process (multi-host) reads the whole result.
        return jax.jit(make(*args), out_shardings=shd.replicated(mesh))


def make_nll_fn(model: IFPModel, cfg: ExperimentConfig, mode: str, temperature: float):
    """Returns fn(params, batch) -> (summed NLL [B], loss weight [B]) over each example's
    loss-weighted target tokens.

    The mask is `batch_mask`'s per example (no mask table: text tasks have no instruction to
    select a per-task mask from); the loss is the train step's (`step._token_losses`): the
    model's forward with that mask, then whole or chunked cross-entropy (train/loss.py).
    """
    chunk = cfg.train.logits_chunk_len

    def run(params, batch):
        mask = batch_mask(model, mode=mode, temperature=temperature, params=params,
                          batch=batch)
        out = model.apply({"params": params}, batch,
                          mode="dense" if mask is None else "given", given_mask=mask,
                          train=False, return_hidden=chunk > 0)
        ce = output_cross_entropy(out, params, cfg, batch["decoder_target_tokens"], model.dtype)
        weights = batch["decoder_loss_weights"]
        return (ce * weights).sum(1), weights.sum(1)

    return run


def _padded_batches(arrays: dict[str, np.ndarray], mesh: Mesh, batch_size: int
                    ) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """(real rows, batch) pairs, batches sharded over the mesh's batch axes covering all rows;
    the last batch is padded by repeating the last row (callers drop rows >= the row count).
    Every batch has one shape: one compiled program serves them all. The fewest batches of at
    most `batch_size` rows, made as even as the devices allow: 1408 rows at 256 are 6 batches
    of 235, not 6 of 256 with 128 rows of padding decoded for nothing."""
    total = len(next(iter(arrays.values())))
    n_dev = mesh.devices.size
    n_batches = -(-total // max(batch_size, 1))
    batch_size = -(-(-(-total // n_batches)) // n_dev) * n_dev
    padded = -(-total // batch_size) * batch_size
    arrays = {k: np.concatenate([v, np.repeat(v[-1:], padded - total, 0)])
              for k, v in arrays.items()}

    for s in range(0, padded, batch_size):
        yield min(batch_size, total - s), {k: jax.make_array_from_callback(
            (batch_size,) + v.shape[1:], shd.batch_sharding(mesh, v.ndim),
            lambda idx, v=v, s=s: v[s:s + batch_size][idx]) for k, v in arrays.items()}


def round_robin_order(counts: list[int]) -> np.ndarray:
    """Row order over tasks stored one after another (task i's counts[i] rows): every task's
    first example, then every task's second, ... So any prefix of the order holds each task's
    first examples, about as many of each: what a time-bounded evaluation scores."""
    rank = np.concatenate([np.arange(n) for n in counts]) if counts else np.zeros(0, int)
    task = np.concatenate([np.full(n, i) for i, n in enumerate(counts)]) if counts else rank
    return np.lexsort((task, rank))


def _run_batches(fn, arrays: dict[str, np.ndarray], run: "_EvalRun", label: str,
                 deadline: float | None, *extra) -> tuple[list, int]:
    """Runs fn(params, batch, *extra) over `arrays` in padded batches, with progress; no batch
    starts after `deadline` (time.monotonic(); the first always runs). Returns (each batch's
    outputs, fetched to the host, and rows scored)."""
    total = len(next(iter(arrays.values())))
    outs, done = [], 0
    with EvalProgress(label, total) as progress:
        for rows, batch in _padded_batches(arrays, run.mesh, run.batch_size):
            if outs and deadline is not None and time.monotonic() >= deadline:
                break
            outs.append(jax.device_get(fn(run.params, batch, *extra)))
            done += rows
            progress.advance(rows)
    return outs, done


def _load_examples(cfg: ExperimentConfig, names: list[str], split: str) -> list[dict]:
    return [pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len, name,
                                        cfg.data.eval_examples_per_task, split)
            for name in names]


def evaluate(model: IFPModel, params: Any, cfg: ExperimentConfig, mesh: Mesh, *,
             task_names: list[str] | None = None, mode: str | None = None,
             batch_size: int = 256, num_samples: int = 3, per_task: bool = False,
             split: str = "validation", text_task_names: list[str] | None = None) -> EvalResult:
    """Exact match per instruction task and perplexity per text task on `split` (all processes
    compute the same full result).

    task_names / text_task_names: the tasks scored by their metric_fns / by perplexity. Both
    None: the mixture's (`pipeline.eval_task_names`); task_names given and text_task_names None:
    no perplexity (what the training hook asks for). mode: the pruning mode that selects masks
    (default: the run's); per_task: select each instruction task's mask once from its
    instruction text (`per_task_masks`) instead of per example. `cfg.data.eval_max_seconds`
    bounds the whole call (both kinds share it); `examples` and `partial` say what was scored."""
    mode = mode or cfg.pruning.mode
    if task_names is None and text_task_names is None:
        text_task_names = pipeline.eval_task_names(cfg.data, text=True)
    task_names = list(pipeline.eval_task_names(cfg.data) if task_names is None else task_names)
    text_task_names = list(text_task_names or [])
    temperature = cfg.pruning.temperature_end
    bound = cfg.data.eval_max_seconds
    deadline = time.monotonic() + bound if bound > 0 else None

    run = _EvalRun(model=model, params=params, cfg=cfg, mesh=mesh, mode=mode,
                   temperature=temperature, batch_size=batch_size, split=split,
                   deadline=deadline)
    result = EvalResult(per_task={}, mask_stats={}, samples={})
    if task_names:
        result = _exact_match(run, task_names, num_samples=num_samples, per_task=per_task)
    if text_task_names:
        perplexity, examples, partial = _perplexity(run, text_task_names)
        result = dataclasses.replace(result, perplexity=perplexity,
                                     examples={**result.examples, **examples},
                                     partial=result.partial or partial)
    return result


@dataclasses.dataclass(frozen=True)
class _EvalRun:
    """What every evaluation of one call shares: the model and params, where they run, how the
    masks are selected, the split read and when to stop (time.monotonic(); None: never)."""
    model: IFPModel
    params: Any
    cfg: ExperimentConfig
    mesh: Mesh
    mode: str
    temperature: float
    batch_size: int
    split: str
    deadline: float | None = None


def _load_round_robin(run: _EvalRun, names: list[str], keys) -> tuple[list[dict], dict, np.ndarray]:
    """(each task's examples, the `keys` arrays of all of them in `round_robin_order`, task
    index [N] of each row in that order)."""
    examples = _load_examples(run.cfg, names, run.split)
    counts = [len(e["decoder_loss_weights"]) for e in examples]
    order = round_robin_order(counts)
    arrays = {k: np.concatenate([e[k] for e in examples])[order] for k in keys}
    task_of = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(counts)])[order]
    return examples, arrays, task_of


def _scored_counts(task_of: np.ndarray, done: int, n_tasks: int) -> list[int]:
    """Examples of each task among the first `done` rows (round-robin: each task's first ones)."""
    return np.bincount(task_of[:done], minlength=n_tasks).tolist()


def _exact_match(run: _EvalRun, task_names: list[str], *, num_samples: int,
                 per_task: bool) -> EvalResult:
    """Exact match per instruction task (perplexity left empty)."""
    model, params, cfg, mesh, mode = run.model, run.params, run.cfg, run.mesh, run.mode
    vocab = vocab_lib.get_vocabulary(cfg.data.vocabulary)
    examples, arrays, task_of = _load_round_robin(run, task_names, EVAL_KEYS)
    num_steps = int(arrays["decoder_loss_weights"].sum(1).max())
    prompt_len = int(np.argmax(arrays["decoder_loss_weights"] > 0, axis=1).max()) + 1
    table = None
    if per_task:
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            table = per_task_masks(model, params, cfg, mode=mode, instructions=(
                task_instruction(name, cfg.data.jsonl_path) for name in task_names))
        arrays["task_index"] = task_of

    fn = _jitted(make_eval_fn, model, mode, run.temperature, num_steps, int(vocab.eos_id),
                 prompt_len, mesh=mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        outs, done = _run_batches(fn, arrays, run, f"exact match, {len(task_names)} tasks",
                                  run.deadline, table)
    generated = np.concatenate([np.asarray(g) for g, _ in outs])[:done]
    counts = _scored_counts(task_of, done, len(task_names))

    per_task_em, samples, scored = {}, {}, {}
    for i, (name, ex) in enumerate(zip(task_names, examples)):
        n = counts[i]
        scored[name] = n
        if n == 0:
            continue
        preds = [_decode_text(vocab, row) for row in generated[task_of[:done] == i]]
        task = seqio.get_mixture_or_task(name)
        values = {}
        for fn_ in task.metric_fns:
            values.update(fn_(list(ex["target_text"][:n]), preds))
        per_task_em[name] = _exact_match_from_metrics(values)
        samples[name] = list(zip(ex["prompt_text"][:num_samples], ex["target_text"][:num_samples],
                                 preds[:num_samples]))

    stats, kept = {}, None
    # Task-major row order (what the mask report groups by): a stable sort by task.
    by_task = np.argsort(task_of[:done], kind="stable")
    if mode != "dense":
        all_masks = np.concatenate([np.asarray(m) for _, m in outs])[:done][by_task]
        stats = metric.compute(mask_statistics(jnp.asarray(all_masks), None,
                                               jnp.asarray(task_of[:done][by_task]),
                                               len(task_names), cfg.pruning.keep_k))
        kept = all_masks != 0
    return EvalResult(per_task=per_task_em, mask_stats=stats, samples=samples, kept=kept,
                      task_of=task_of[:done][by_task], examples=scored,
                      partial=done < len(task_of))


def _perplexity(run: _EvalRun, text_task_names: list[str]
                ) -> tuple[dict[str, float], dict[str, int], bool]:
    """(text task -> exp(mean NLL over its scored examples' loss-weighted target tokens),
    examples scored per task, partial?)."""
    examples, arrays, task_of = _load_round_robin(run, text_task_names, NLL_KEYS)
    # Per-task mode: a text task has no instruction, so its masks are per-input (the predictor
    # reads each example's predictor_tokens: chunk k); `mode` is the run's pruning mode then.
    # Not cached like exact match's program: the config (a dict inside) is no cache key.
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        fn = jax.jit(make_nll_fn(run.model, run.cfg, run.mode, run.temperature),
                     out_shardings=shd.replicated(run.mesh))
        outs, done = _run_batches(fn, arrays, run, f"perplexity, {len(text_task_names)} tasks",
                                  run.deadline)
    nll = np.concatenate([np.asarray(s, np.float64) for s, _ in outs])[:done]
    weight = np.concatenate([np.asarray(w, np.float64) for _, w in outs])[:done]
    counts = _scored_counts(task_of, done, len(text_task_names))

    out, scored = {}, {}
    for i, name in enumerate(text_task_names):
        scored[name] = counts[i]
        if counts[i] == 0:
            continue
        rows = task_of[:done] == i
        tokens = weight[rows].sum()
        mean_nll = nll[rows].sum() / tokens if tokens > 0 else float("nan")
        with np.errstate(over="ignore"):  # an overflow is inf, reported as null
            out[name] = float(np.exp(mean_nll))
    return out, scored, done < len(task_of)
