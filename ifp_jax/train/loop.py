"""`ifp train`: the training loop (resumable, preemption-safe, stage-chained)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.data import pipeline, tasks
from ifp_jax.data import vocab as vocab_lib
from ifp_jax.eval import evaluate as eval_lib
from ifp_jax.eval.mask_stats import finalize
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.metrics import MetricsWriter, print_primary
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import (TrainState, build_model, create_state,
                                 restore_latest_params, state_layout)
from ifp_jax.train.step import STEP_KEYS, make_train_step

EVAL_FILE = "eval_results.json"


class NonFiniteLossError(RuntimeError):
    pass


def load_params_from_workdir(workdir: str, mesh) -> Any:
    """Params of the latest checkpoint of another run (stage chaining), on `mesh`."""
    src_cfg = ckpt_lib.load_workdir_config(workdir)
    return restore_latest_params(workdir, src_cfg, mesh, hint="train that stage first")[1]


def _graft(params: dict, source: dict, key: str, origin: str) -> dict:
    """Returns params with sub-tree `key` taken from `source`, after checking shapes match."""
    mine = jax.tree_util.tree_map(lambda x: x.shape, params[key])
    theirs = jax.tree_util.tree_map(lambda x: x.shape, source[key])
    if mine != theirs:
        raise ConfigError(f"{origin}: its '{key}' parameters have other shapes than this "
                          f"experiment's; use a source run with the same {key} config")
    return {**params, key: source[key]}


def _stage_init(cfg: ExperimentConfig, mesh):
    """params_override for create_state: LLM and/or predictor from other runs (params only)."""
    if not (cfg.train.init_llm_from or cfg.train.init_predictor_from):
        return None

    def override(params):
        if cfg.train.init_llm_from:
            src = load_params_from_workdir(cfg.train.init_llm_from, mesh)
            params = _graft(params, src, "decoder", f"train.init_llm_from={cfg.train.init_llm_from}")
            print_primary(f"[ifp] LLM initialised from {cfg.train.init_llm_from}")
        if cfg.train.init_predictor_from:
            src = load_params_from_workdir(cfg.train.init_predictor_from, mesh)
            origin = f"train.init_predictor_from={cfg.train.init_predictor_from}"
            params = _graft(params, src, "predictor", origin)
            params = _graft(params, src, "static_scores", origin)
            print_primary(f"[ifp] predictor initialised from {cfg.train.init_predictor_from}")
        return params

    return override


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _host_sums(device_sums: dict) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in jax.device_get(device_sums).items()}


def _window_metrics(sums: dict, steps: int, task_names: list[str]) -> dict:
    m = {"loss": sums["ce_sum"] / max(sums["weight_sum"], 1.0),
         "grad_norm": sums["grad_norm"] / steps, "temperature": sums["temperature"] / steps,
         "nonfinite_steps": steps - sums["finite"],
         "data/predictor_truncated": sums["predictor_truncated"],
         "data/decoder_truncated": sums["decoder_truncated"]}
    if "balance_loss_sum" in sums:
        m["balance_loss"] = sums["balance_loss_sum"] / steps
    for i, name in enumerate(task_names):
        if sums["task_weight_sum"][i] > 0:
            m[f"task_loss/{name}"] = sums["task_ce_sum"][i] / sums["task_weight_sum"][i]
    m.update(finalize({k: float(np.sum(v)) for k, v in sums.items() if np.ndim(v) == 0}))
    return m


def run_eval(model, params, cfg: ExperimentConfig, mesh, workdir: str, step: int,
             writer: MetricsWriter) -> eval_lib.EvalResult | None:
    names = pipeline.eval_task_names(cfg.data)
    if not names:
        return None
    result = eval_lib.evaluate(model, params, cfg, mesh, names)
    metrics = {f"eval/exact_match/{k}": v for k, v in result.per_task.items()}
    metrics["eval/mean_exact_match"] = result.mean
    metrics.update({f"eval/{k}": v for k, v in result.mask_stats.items()})
    writer.write(step, metrics)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, EVAL_FILE), "w") as f:
            json.dump({"step": step, "mode": cfg.pruning.mode, "eval_mask": cfg.pruning.eval_mask,
                       "per_task_exact_match": result.per_task, "mean_exact_match": result.mean,
                       "mask_stats": result.mask_stats, "samples": result.samples}, f, indent=2)
    return result


def train(cfg: ExperimentConfig, workdir: str, final_eval: bool = True) -> TrainState:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint if there is one.

    `final_eval=False` skips the held-out evaluation after the last step (the demo evaluates
    every stage side by side itself).
    """
    vocab_lib.check_vocab_fits(cfg.data.vocabulary, cfg.model.vocab_size, "data.vocabulary",
                               "model.vocab_size")
    vocab_lib.check_vocab_fits(cfg.data.predictor_vocabulary, cfg.predictor.backbone.vocab_size,
                               "data.predictor_vocabulary", "predictor.backbone.vocab_size")
    ckpt_lib.prepare_workdir(workdir, cfg)
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    batches = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len,
                                          jax.process_index(), jax.process_count())
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    layout = state_layout(model, cfg, tx, mesh)
    ckpt = ckpt_lib.Checkpointer(workdir, cfg.checkpoint)
    restored = ckpt.restore_latest(layout.abstract)
    if restored is not None:
        start, state, data_state = restored
        batches.set_state(data_state)
        print_primary(f"[ifp] resumed {workdir} at step {start}")
    else:
        start = 0
        state = create_state(model, cfg, tx, layout, mesh, _stage_init(cfg, mesh))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params["decoder"]))
    n_pred = sum(x.size for x in jax.tree_util.tree_leaves(state.params["predictor"]))
    print_primary(f"[ifp] {cfg.name}: LLM {n_params/1e6:.2f}M params, predictor {n_pred/1e6:.2f}M, "
                  f"mode={cfg.pruning.mode}, k={cfg.pruning.keep_k}/{cfg.model.d_ffn}, "
                  f"mesh={dict(mesh.shape)}, {cfg.train.steps} steps")

    step_fn = make_train_step(model, cfg, tx, len(batches.task_names))
    batch_shardings = None
    writer = MetricsWriter(workdir, cfg.train.steps, label=cfg.name)
    preempt = _Preemption()
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    window, window_steps = None, 0
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        jit_step = None
        writer.start_window(start)
        step = start
        try:
            while step < cfg.train.steps:
                host = next(batches)
                host = {k: host[k] for k in STEP_KEYS}
                if jit_step is None:
                    batch_shardings = {k: shd.batch_sharding(mesh, v.ndim) for k, v in host.items()}
                    jit_step = jax.jit(step_fn, in_shardings=(layout.shardings, batch_shardings),
                                       out_shardings=(layout.shardings, None), donate_argnums=0)
                batch = {k: jax.make_array_from_process_local_data(batch_shardings[k], v)
                         for k, v in host.items()}
                state, sums = jit_step(state, batch)
                step += 1
                window = sums if window is None else jax.tree_util.tree_map(jnp.add, window, sums)
                window_steps += 1
                last = step == cfg.train.steps
                if step % cfg.train.log_every == 0 or last or preempt.requested:
                    host_sums = _host_sums(window)
                    if host_sums["finite"] < window_steps:
                        msg = (f"non-finite loss or gradient in {window_steps - int(host_sums['finite'])}"
                               f" step(s) before step {step} (those updates were not applied)")
                        if cfg.train.nan_policy == "stop":
                            raise NonFiniteLossError(msg + "; stopping (train.nan_policy=stop); the "
                                                     "last checkpoint is intact")
                        print_primary(f"[ifp] warning: {msg}; skipped (train.nan_policy=skip)")
                    metrics = _window_metrics(host_sums, window_steps, batches.task_names)
                    metrics.update(writer.rate(step, tokens_per_step * window_steps))
                    writer.write(step, metrics)
                    writer.start_window(step)
                    window, window_steps = None, 0
                if step % cfg.checkpoint.every_steps == 0 or last or preempt.requested:
                    ckpt.save(step, state, batches.get_state())
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not last:
                    run_eval(model, state.params, cfg, mesh, workdir, step, writer)
                if preempt.requested:
                    ckpt.wait()
                    print_primary(f"[ifp] SIGTERM: checkpoint saved at step {step}; exiting")
                    raise SystemExit(143)
            if start >= cfg.train.steps:
                print_primary(f"[ifp] {workdir} already trained to step {start} "
                              f"(train.steps={cfg.train.steps})")
        finally:
            ckpt.close()
            preempt.restore()
        if final_eval and not preempt.requested:
            run_eval(model, state.params, cfg, mesh, workdir, step, writer)
    writer.close()
    return state
