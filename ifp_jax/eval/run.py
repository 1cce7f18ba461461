"""`ifp eval`: restore a workdir's latest params (params only) and report held-out exact match.

Results go to DIR/eval_<mask>_<eval mask>.json (e.g. eval_per-task_lambda.json), so evaluations
under different masks sit side by side; `--json` prints the same object on stdout. Masked
evaluations also write the mask analysis (eval/mask_analysis.py) to DIR/masks_<mask>_<eval mask>/.
"""

from __future__ import annotations

import json
import os

import jax

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, ExperimentConfig, load_workdir_config, replace
from ifp_jax.data import tasks
from ifp_jax.eval.evaluate import MASKS, EvalResult, evaluate
from ifp_jax.eval.mask_analysis import write_mask_report
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.state import build_model, params_layout


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


def results_path(workdir: str, mask: str, eval_mask: str) -> str:
    return os.path.join(workdir, f"eval_{mask}_{eval_mask}.json")


def evaluate_workdir(workdir: str, mask: str | None = None, eval_mask: str | None = None,
                     as_json: bool = False, verbose: bool = True
                     ) -> tuple[ExperimentConfig, EvalResult]:
    """Evaluates `workdir` with its own config under `mask` (MASKS; default `default_mask`) and
    `eval_mask` (hard / lambda; default the run's). Writes results_path(...) and prints a table
    (or, as_json, the results object alone on stdout)."""
    cfg = load_workdir_config(workdir)
    mask = mask or default_mask(cfg)
    if eval_mask:
        cfg = replace(cfg, pruning=replace(cfg.pruning, eval_mask=eval_mask))
    mode, per_task = _selection_mode(mask, cfg)
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    step, params = ckpt_lib.restore_latest_params(workdir, params_layout(model, cfg, mesh))
    result = evaluate(model, params, cfg, mesh, mode=mode, per_task=per_task)
    record = {"workdir": os.path.abspath(workdir), "step": step, "mask": mask,
              "eval_mask": cfg.pruning.eval_mask, "per_task": result.per_task,
              "mean": result.mean, "mask_stats": result.mask_stats,
              "samples": {k: [list(s) for s in v] for k, v in result.samples.items()}}
    if jax.process_index() == 0:
        if result.kept is not None:
            report_dir = os.path.join(workdir, f"masks_{mask}_{cfg.pruning.eval_mask}")
            write_mask_report(report_dir, result.kept, result.task_of, list(result.per_task),
                              f"{os.path.basename(os.path.abspath(workdir))}, {mask} masks",
                              os.path.join(workdir, "metrics.jsonl"))
            record["mask_report"] = report_dir
        with open(results_path(workdir, mask, cfg.pruning.eval_mask), "w") as f:
            json.dump(record, f, indent=2)
        if as_json:
            print(json.dumps(record))
        elif verbose:
            print(f"{workdir} @ step {step}, mask={mask}, eval_mask={cfg.pruning.eval_mask}")
            for name, em in result.per_task.items():
                print(f"  {name:32s} {em:6.3f}")
            print(f"  {'mean':32s} {result.mean:6.3f}")
            for k, v in result.mask_stats.items():
                print(f"  {k:32s} {v:6.3f}")
    return cfg, result
