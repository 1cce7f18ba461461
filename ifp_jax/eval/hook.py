"""A training-loop hook that evaluates held-out exact match (every N steps and at the end).

The loop (train/loop.py) never imports evaluation; `ifp train` hands it this hook. Results go to
the metric sinks as eval/* and to DIR/eval_results.json (process 0 only), with the examples
scored per task and `partial` when data.eval_max_seconds cut an evaluation short.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from ifp_jax import json_files
from ifp_jax.data import pipeline
from ifp_jax.eval.evaluate import evaluate

EVAL_FILE = "eval_results.json"


@dataclasses.dataclass
class EvaluateHeldOut:
    every: int = 0  # 0: only at the end
    at_end: bool = True

    def begin(self, ctx, step, state):
        pass

    def __call__(self, ctx, step, state, metrics):
        if step < ctx.cfg.train.steps:  # the final evaluation is end()'s
            self._run(ctx, step, state.params)

    def end(self, ctx, step, state):
        if self.at_end:
            self._run(ctx, step, state.params)

    def _run(self, ctx, step, params) -> None:
        cfg = ctx.cfg
        names = pipeline.eval_task_names(cfg.data)
        if not names:
            return
        result = evaluate(ctx.model, params, cfg, ctx.mesh, task_names=names)
        metrics = {f"eval/exact_match/{k}": v for k, v in result.per_task.items()}
        metrics["eval/mean_exact_match"] = result.mean
        metrics["eval/partial"] = float(result.partial)
        metrics.update({f"eval/{k}": v for k, v in result.mask_stats.items()})
        ctx.writer.write(step, metrics)
        if jax.process_index() == 0:
            record = {"step": step, "mode": cfg.pruning.mode, "eval_mask": cfg.pruning.eval_mask,
                      "per_task_exact_match": result.per_task, "mean_exact_match": result.mean,
                      "mask_stats": result.mask_stats, "examples": result.examples,
                      "partial": result.partial, "samples": result.samples}
            json_files.write_json(os.path.join(ctx.workdir, EVAL_FILE), record, indent=2)
