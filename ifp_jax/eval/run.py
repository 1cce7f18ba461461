"""`ifp eval`: restore a workdir's latest params (params only) and evaluate its mixture's tasks.

Instruction tasks report exact match through their SeqIO `metric_fns` (and `mean` over them);
text (CPT) tasks report perplexity, exp of the training loss's mean token NLL on their target
chunks, under the same mask (eval/evaluate.py). `--split NAME` picks the tasks' split: the
held-out 'validation' (default) or 'train'.

Results go to DIR/eval_<mask>_<eval mask>.json (e.g. eval_per-task_lambda.json), or
DIR/eval_<mask>_<eval mask>_<split>.json for a split other than 'validation' (e.g.
eval_dense_lambda_train.json), so evaluations sit side by side; `--json` prints the same object
on stdout, with the examples scored per task (`examples`) and whether the time bound
`data.eval_max_seconds` cut the evaluation short (`partial`). Values that are not finite
(`mean` of a mixture with no instruction task) are written as null. Masked evaluations also
write the mask analysis (eval/mask_analysis.py) of the instruction tasks' masks to
DIR/masks_<mask>_<eval mask>[_<split>]/.
"""

from __future__ import annotations

import json
import math

import jax

from ifp_jax import json_files
from ifp_jax.config import ConfigError, ExperimentConfig, load_workdir_config, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.eval.evaluate import EvalResult, evaluate
from ifp_jax.selection.batch_masks import MASKS
from ifp_jax.eval.mask_analysis import write_mask_report
from ifp_jax.train.runs import open_run
from ifp_jax.safe_names import plain_name
from ifp_jax.storage import paths, staging
from ifp_jax.workdir import metrics_path


def default_mask(cfg: ExperimentConfig) -> str:
    """The mask a run is evaluated under unless told otherwise: what it was trained with."""
    return {"dense": "dense", "static": "static"}.get(cfg.pruning.mode, "per-input")


def _selection_mode(mask: str, cfg: ExperimentConfig) -> tuple[str, bool]:
    """--mask -> (pruning mode that selects, per-task?)."""
    if mask not in MASKS:
        raise ConfigError(f"--mask must be one of {', '.join(MASKS)}, not {mask!r}")
    if mask in ("dense", "griffin"):  # the LLM alone: any run
        return mask, False
    if mask == "static":
        if cfg.pruning.mode != "static":
            raise ConfigError(f"--mask static needs a run trained with pruning.mode=static "
                              f"(this run: {cfg.pruning.mode})")
        return "static", False
    if cfg.pruning.mode not in ("soft", "hard"):
        raise ConfigError(f"--mask {mask} needs a run with a trained predictor (pruning.mode "
                          f"soft or hard; this run: {cfg.pruning.mode}); use --mask "
                          f"{'static' if cfg.pruning.mode == 'static' else 'dense'}")
    return cfg.pruning.mode, mask == "per-task"


def _suffix(mask: str, eval_mask: str, split: str) -> str:
    """The name part of DIR/eval_<suffix>.json and DIR/masks_<suffix>/ (the split is the user's
    --split: never a path)."""
    plain_name(split, "--split", ConfigError)
    return f"{mask}_{eval_mask}" + ("" if split == "validation" else f"_{split}")


def results_path(workdir: str, mask: str, eval_mask: str, split: str = "validation") -> str:
    return paths.join(workdir, f"eval_{_suffix(mask, eval_mask, split)}.json")


def check_split(split: str, task_names: list[str]) -> None:
    """A one-line ConfigError unless every task to evaluate has `split`."""
    from ifp_jax.tf_import import seqio
    valid = [s for s in seqio.get_mixture_or_task(task_names[0]).splits
             if all(s in seqio.get_mixture_or_task(t).splits for t in task_names[1:])]
    if split not in valid:
        raise ConfigError(f"--split must be one of {', '.join(valid)} (the splits of this run's "
                          f"tasks), not {split!r}")


def _json_safe(value):
    """NaN / inf -> None (JSON has no literal for them), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def evaluate_workdir(workdir: str, *, mask: str | None = None, eval_mask: str | None = None,
                     as_json: bool = False, verbose: bool = True, split: str = "validation"
                     ) -> tuple[ExperimentConfig, EvalResult]:
    """Evaluates `workdir` with its own config under `mask` (MASKS; default `default_mask`) and
    `eval_mask` (hard / lambda; default the run's) on the tasks' `split`: exact match of the
    instruction tasks, perplexity of the text tasks. Writes results_path(...) and prints a table
    (or, as_json, the results object alone on stdout)."""
    cfg = load_workdir_config(workdir)
    mask = mask or default_mask(cfg)
    if eval_mask:
        cfg = replace(cfg, pruning=replace(cfg.pruning, eval_mask=eval_mask))
    mode, per_task = _selection_mode(mask, cfg)
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    names = pipeline.eval_task_names(cfg.data)
    text_names = pipeline.eval_task_names(cfg.data, text=True)
    check_split(split, names + text_names)  # before any model work
    run = open_run(workdir, cfg=cfg)
    step = run.step
    result = evaluate(run.model, run.params, cfg, run.mesh, task_names=names, mode=mode,
                      per_task=per_task, split=split, text_task_names=text_names)
    suffix = _suffix(mask, cfg.pruning.eval_mask, split)
    record = {"workdir": paths.absolute(workdir), "step": step, "mask": mask,
              "eval_mask": cfg.pruning.eval_mask, "split": split, "per_task": result.per_task,
              "mean": result.mean, "perplexity": result.perplexity,
              "mask_stats": result.mask_stats, "examples": result.examples,
              "partial": result.partial,
              "samples": {k: [list(s) for s in v] for k, v in result.samples.items()}}
    if jax.process_index() == 0:
        if result.kept is not None:
            report_dir = paths.join(workdir, f"masks_{suffix}")
            with staging.staged_output(report_dir, marker="overlap.json") as tmp:
                write_mask_report(tmp, masks=result.kept, task_of=result.task_of,
                                  names=list(result.per_task),
                                  title=f"{paths.basename(paths.absolute(workdir))}, {mask} "
                                  f"masks" + ("" if split == "validation" else f", {split} split"),
                                  metrics_path=metrics_path(workdir))
            record["mask_report"] = report_dir
        record = _json_safe(record)
        json_files.write_json(results_path(workdir, mask, cfg.pruning.eval_mask, split), record,
                               indent=2, allow_nan=False)
        if as_json:
            print(json.dumps(record, allow_nan=False))
        elif verbose:
            print(f"{workdir} @ step {step}, mask={mask}, eval_mask={cfg.pruning.eval_mask}, "
                  f"split={split}")
            if result.partial:
                print(f"  PARTIAL (data.eval_max_seconds={cfg.data.eval_max_seconds:g}): "
                      + ", ".join(f"{k} {n}" for k, n in result.examples.items())
                      + " examples")
            if result.per_task:
                print("  exact match")
            for name, em in result.per_task.items():
                print(f"  {name:32s} {em:6.3f}")
            if result.per_task:
                print(f"  {'mean':32s} {result.mean:6.3f}")
            if result.perplexity:
                print("  perplexity")
            for name, ppl in result.perplexity.items():
                print(f"  {name:32s} {ppl:6.3f}")
            for k, v in result.mask_stats.items():
                print(f"  {k:32s} {v:6.3f}")
    return cfg, result
