"""`ifp eval`: restore a workdir's latest params (params only) and report held-out exact match."""

from __future__ import annotations

import jax

from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig, replace
from ifp_jax.data import tasks
from ifp_jax.eval.evaluate import EvalResult, evaluate
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.state import build_model, params_layout


def evaluate_workdir(workdir: str, mode: str | None = None, eval_mask: str | None = None,
                     verbose: bool = True) -> tuple[ExperimentConfig, EvalResult]:
    """Evaluates `workdir` with its own config, optionally under another mask mode/eval mask."""
    cfg = ckpt_lib.load_workdir_config(workdir)
    if eval_mask:
        cfg = replace(cfg, pruning=replace(cfg.pruning, eval_mask=eval_mask))
    mode = mode or cfg.pruning.mode
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    step, params = ckpt_lib.restore_latest_params(workdir, params_layout(model, cfg, mesh))
    result = evaluate(model, params, cfg, mesh, mode=mode)
    if verbose and jax.process_index() == 0:
        print(f"{workdir} @ step {step}, mode={mode}, eval_mask={cfg.pruning.eval_mask}")
        for name, em in result.per_task.items():
            print(f"  {name:32s} {em:6.3f}")
        print(f"  {'mean':32s} {result.mean:6.3f}")
        for k, v in result.mask_stats.items():
            print(f"  {k:32s} {v:6.3f}")
    return cfg, result
