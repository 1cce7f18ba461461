"""`ifp train`: the training loop (resumable, preemption-safe, stage-chained, multi-process).

Order of work, so that a bad config or a busy workdir fails before anything is touched:
lock the workdir -> check and write config.json -> build the state layout (abstract shapes and
shardings) -> compile the step from it -> restore the latest checkpoint or initialise -> loop.
Per step the loop merges the step's typed metrics into a window; at window ends it computes them
once on the host, applies the NaN policy, and hands them to the hooks (logging, checkpointing,
evaluation, profiling: train/hooks.py). Each process feeds only its own rows of every global batch.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Sequence

import jax

from ifp_jax import distributed, metric
from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, ExperimentConfig, load_workdir_config
from ifp_jax.data import pipeline, tasks
from ifp_jax.data import vocab as vocab_lib
from ifp_jax.hf import imported
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.compiled import batch_layout, compile_train_step
from ifp_jax.train.hooks import Hook, LogMetrics, LoopContext, SaveCheckpoint
from ifp_jax.train.metrics import MetricsWriter, print_primary
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import (TrainState, build_model, create_state, params_layout,
                                 state_layout)
from ifp_jax.train.step import STEP_KEYS
from ifp_jax.train.workdir_lock import WorkdirLock


class NonFiniteLossError(RuntimeError):
    pass


def _graft(params: dict, source: dict, key: str, origin: str) -> dict:
    """Returns params with sub-tree `key` taken from `source`, after checking shapes match."""
    mine = jax.tree_util.tree_map(lambda x: x.shape, params[key])
    theirs = jax.tree_util.tree_map(lambda x: x.shape, source[key])
    if mine != theirs:
        raise ConfigError(f"{origin}: its '{key}' parameters have other shapes than this "
                          f"experiment's; use a source run with the same {key} config")
    return {**params, key: source[key]}


def _source_params(workdir: str, mesh, like: Any = None) -> dict:
    """Params only (no optimizer state) of another run's latest checkpoint, on `mesh`; for an
    `ifp import-hf` dir, its decoder params placed like the decoder tree `like`."""
    if imported.is_import_dir(workdir):
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        return imported.restore_import_params(workdir, abstract)
    src_cfg = load_workdir_config(workdir)
    abstract = params_layout(build_model(src_cfg), src_cfg, mesh)
    return ckpt_lib.restore_latest_params(workdir, abstract, hint="train that stage first")[1]


def _stage_init(cfg: ExperimentConfig, mesh):
    """params_override for create_state: LLM and/or predictor from other runs (params only)
    or from import dirs (the LLM, or the predictor's backbone; its head stays fresh)."""
    if not (cfg.train.init_llm_from or cfg.train.init_predictor_from):
        return None

    def override(params):
        if cfg.train.init_llm_from:
            path, origin = cfg.train.init_llm_from, f"train.init_llm_from={cfg.train.init_llm_from}"
            src = ({"decoder": _source_params(path, mesh, params["decoder"])}
                   if imported.is_import_dir(path) else _source_params(path, mesh))
            params = _graft(params, src, "decoder", origin)
            print_primary(f"[ifp] LLM initialised from {path}")
        if cfg.train.init_predictor_from:
            path = cfg.train.init_predictor_from
            origin = f"train.init_predictor_from={path}"
            if imported.is_import_dir(path):
                backbone = _source_params(path, mesh, params["predictor"]["backbone"])
                params = {**params, "predictor": _graft(params["predictor"],
                                                        {"backbone": backbone}, "backbone", origin)}
            else:
                src = _source_params(path, mesh)
                params = _graft(params, src, "predictor", origin)
                params = _graft(params, src, "static_scores", origin)
            print_primary(f"[ifp] predictor initialised from {path}")
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


def _check_finite(metrics: dict, step: int, policy: str) -> None:
    bad = int(metrics.get("nonfinite_steps", 0))
    if not bad:
        return
    msg = (f"non-finite loss or gradient in {bad} step(s) before step {step} (those updates "
           f"were not applied)")
    if policy == "stop":
        raise NonFiniteLossError(msg + "; stopping (train.nan_policy=stop); the last checkpoint "
                                 "is intact")
    print_primary(f"[ifp] warning: {msg}; skipped (train.nan_policy=skip)")


def train(cfg: ExperimentConfig, workdir: str, hooks: Sequence[Hook] = ()) -> TrainState:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint if there is one.

    `hooks` run besides the built-in logging and checkpointing (e.g. eval/hook.py's
    EvaluateHeldOut, train/hooks.py's Profile). Returns the final state.
    """
    cfg = imported.adopt_imports(cfg)  # import dirs dictate the architecture (and config.json)
    vocab_lib.check_vocab_fits(cfg.data.vocabulary, cfg.model.vocab_size, "data.vocabulary",
                               "model.vocab_size")
    vocab_lib.check_vocab_fits(cfg.data.predictor_vocabulary, cfg.predictor.backbone.vocab_size,
                               "data.predictor_vocabulary", "predictor.backbone.vocab_size")
    lock = WorkdirLock(workdir)
    lock.acquire()
    try:
        return _train_locked(cfg, workdir, hooks)
    finally:
        lock.release()


def _train_locked(cfg: ExperimentConfig, workdir: str, hooks: Sequence[Hook]) -> TrainState:
    distributed.on_primary(ckpt_lib.prepare_workdir, workdir, cfg)
    mesh = shd.make_mesh(cfg.mesh)
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    batch_specs = batch_layout(cfg, mesh)
    rows = shd.process_batch_rows(batch_specs["decoder_input_tokens"].sharding,
                                  cfg.data.global_batch_size)
    batches = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len, rows=rows)
    model = build_model(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    layout = state_layout(model, cfg, tx, mesh)
    t0 = time.time()
    step_fn = compile_train_step(model, cfg, tx, layout, mesh, len(batches.task_names))
    print_primary(f"[ifp] train step compiled in {time.time() - t0:.1f}s")

    ckpt = ckpt_lib.Checkpointer(workdir, cfg.checkpoint)
    restored = ckpt.restore_latest(layout.abstract)
    if restored is not None:
        start, state, data_state = restored
        batches.set_state(data_state)
        print_primary(f"[ifp] resumed {workdir} at step {start}")
    else:
        start = 0
        state = create_state(model, cfg, tx, layout, mesh, _stage_init(cfg, mesh))
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
    print_primary(f"[ifp] {cfg.name}: LLM {count(state.params['decoder'])/1e6:.2f}M params, "
                  f"predictor {count(state.params['predictor'])/1e6:.2f}M, mode={cfg.pruning.mode},"
                  f" k={cfg.pruning.keep_k}/{cfg.model.d_ffn}, mesh={dict(mesh.shape)}, "
                  f"processes={jax.process_count()}, {cfg.train.steps} steps")

    writer = MetricsWriter(workdir, cfg.train.steps, label=cfg.name)
    ctx = LoopContext(cfg=cfg, workdir=workdir, model=model, mesh=mesh, writer=writer,
                      task_names=batches.task_names, data_state=batches.get_state)
    saver = SaveCheckpoint(every=cfg.checkpoint.every_steps, checkpointer=ckpt)
    all_hooks = [LogMetrics(every=1), saver, *hooks]
    preempt = _Preemption()
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    window: dict[str, Any] | None = None
    window_steps, step = 0, start
    writer.start_window(start)
    try:
        for hook in all_hooks:
            hook.begin(ctx, step, state)
        while step < cfg.train.steps:
            host = next(batches)
            batch = {k: jax.make_array_from_process_local_data(batch_specs[k].sharding, host[k])
                     for k in STEP_KEYS}
            state, step_metrics = step_fn(state, batch)
            step += 1
            window = metric.merge(window, step_metrics)
            window_steps += 1
            last = step == cfg.train.steps
            metrics: dict = {}
            if step % cfg.train.log_every == 0 or last or preempt.requested:
                metrics = metric.compute(window, {"task_loss": batches.task_names})
                _check_finite(metrics, step, cfg.train.nan_policy)
                metrics.update(writer.rate(step, tokens_per_step * window_steps))
                writer.start_window(step)
                window, window_steps = None, 0
            for hook in all_hooks:
                if hook.every and step % hook.every == 0:
                    hook(ctx, step, state, metrics)
            if preempt.requested:
                saver.save_now(ctx, step, state)
                print_primary(f"[ifp] SIGTERM: checkpoint saved at step {step}; exiting")
                raise SystemExit(143)
        if start >= cfg.train.steps:
            print_primary(f"[ifp] {workdir} already trained to step {start} "
                          f"(train.steps={cfg.train.steps})")
        for hook in all_hooks:
            hook.end(ctx, step, state)
    finally:
        ckpt.close()
        preempt.restore()
        writer.close()
    return state
