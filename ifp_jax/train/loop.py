"""`ifp train`: the training loop (resumable, preemption-safe, stage-chained, multi-process).

Order of work, so that a bad config or a busy workdir fails before anything is touched:
lock the workdir -> check and write config.json -> build the state layout (abstract shapes and
shardings) -> compile the step from it -> restore the latest checkpoint or initialise -> loop.
An error before the first step removes the workdir if this call created it (nothing of the run
is in it yet); an existing workdir is never cleaned.
Per step the loop merges the step's typed metrics into a window; at window ends it computes them
once on the host, applies the NaN policy, and hands them to the hooks (logging, checkpointing,
evaluation, profiling: train/hooks.py). Each process feeds only its own rows of every global batch.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Sequence

import jax

from ifp_jax import distributed, host_malloc, host_memory, metric
from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig
from ifp_jax.storage import gcs, paths
from ifp_jax.data import pipeline, tasks
from ifp_jax.vocab import seqio_vocab as vocab_lib
from ifp_jax.hf import imported
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train import fit_predictor, init_scores, preflight
from ifp_jax.train.compiled import batch_layout, compile_train_step
from ifp_jax.train.hooks import Hook, LogMetrics, LoopContext, SaveCheckpoint
from ifp_jax.train.metrics import MetricsWriter, print_primary
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.run_errors import NonFiniteLossError
from ifp_jax.train.run_events import RunEvents
from ifp_jax.train.stage_init import stage_init
from ifp_jax.train.state import (TrainState, build_model, create_state, state_layout)
from ifp_jax.train.step import STEP_KEYS
from ifp_jax.train.teacher import Teacher
from ifp_jax.train.workdir_lock import WorkdirLock


# `ifp train`'s exit status after a preemption notice: saved, rerun to resume (EX_TEMPFAIL).
# tpu/run.sh relaunches on it; 0 means the run is complete, anything else is a failure.
EXIT_PREEMPTED = 75


class _Preemption:
    """A preemption notice (SIGTERM) -> every process saves at the same step and exits.

    One process: SIGTERM sets a flag, read at the next step boundary. Several processes: the
    notice may reach any one of them, and a save is collective, so a per-process flag would
    deadlock. JAX's preemption sync manager (started by jax.distributed.initialize) catches
    SIGTERM in every process, spreads the notice through the coordination service and agrees
    on the step at which all processes stop: `reached_preemption_sync_point(step)`.
    """

    def __init__(self):
        self._flag = False
        self._shared = jax.process_count() > 1
        self._previous = None
        if not self._shared:  # a Python handler would replace JAX's in the shared case
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self._flag = True

    def reached(self, step: int) -> bool:
        """Called once per step on every process; True at the step where all of them save."""
        if not self._shared:
            return self._flag
        from jax.experimental import multihost_utils
        return multihost_utils.reached_preemption_sync_point(step)

    def restore(self):
        if self._previous is not None:
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
    if paths.is_remote(workdir):  # every process: a bucket it cannot use is one line, at once
        gcs.check_bucket(workdir, write=jax.process_index() == 0)
    created = not paths.exists(workdir)
    if jax.process_index() == 0:
        preflight.check_workdir_writable(workdir)
    lock = WorkdirLock(workdir, stale_after_s=cfg.checkpoint.lock_stale_minutes * 60)
    lock.acquire()
    progress = {"training": False}
    try:
        return _train_locked(cfg, workdir, hooks, progress, lock)
    except BaseException:
        if created and not progress["training"] and jax.process_index() == 0:
            lock.release()  # a bad mesh, data or source found while setting up: the workdir
            paths.rmtree(workdir)  # this call made holds nothing yet
        raise
    finally:
        lock.release()


def _prepare_selection(state, cfg, mesh, model, batches, batch_specs):
    """A fresh start's selection scores: pruning.init_scores='activation'
    (train/init_scores.py), then pruning.fit_predictor_steps (train/fit_predictor.py)."""
    def to_global(keys):  # host batch -> those fields as global arrays
        return lambda host: {k: jax.make_array_from_process_local_data(batch_specs[k].sharding,
                                                                        host[k]) for k in keys}

    if cfg.pruning.init_scores == "activation":
        skip = init_scores.skip_reason(cfg)
        if skip:
            print_primary(f"[ifp] pruning.init_scores=activation left unused: {skip}")
        else:
            state = init_scores.initialise_scores(
                state, cfg, mesh, model.dtype, batches,
                to_global(("decoder_input_tokens", "decoder_loss_weights")))
    if cfg.pruning.fit_predictor_steps:
        skip = fit_predictor.skip_reason(cfg)
        if skip:
            print_primary(f"[ifp] pruning.fit_predictor_steps left unused: {skip}")
        else:
            state = fit_predictor.fit_predictor(state, cfg, model, mesh, batches,
                                                to_global(fit_predictor.FIT_KEYS))
    return state


def _train_locked(cfg: ExperimentConfig, workdir: str, hooks: Sequence[Hook],
                  progress: dict, lock: WorkdirLock) -> TrainState:
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
    if jax.process_index() == 0:  # before compiling, which can take minutes at scale
        disk = preflight.check_disk(workdir, preflight.state_bytes(layout.abstract),
                                    cfg.checkpoint.keep)
        print_primary(f"[ifp] {disk}")
    t0 = time.time()
    step_fn = compile_train_step(model, cfg, tx, layout=layout, mesh=mesh,
                                 num_tasks=len(batches.task_names))
    print_primary(f"[ifp] train step compiled in {time.time() - t0:.1f}s")
    print_primary(f"[ifp] {preflight.device_memory_line(step_fn, cfg)}")
    ckpt = ckpt_lib.Checkpointer(workdir, cfg.checkpoint,
                                 largest_array_bytes=preflight.largest_array_bytes(layout.abstract))
    host_line = preflight.host_memory_line(
        step_fn, preflight.save_bytes(layout.abstract, ckpt.is_async, ckpt.write_limit_gb))
    if host_line:
        print_primary(f"[ifp] {host_line}")
    teacher = Teacher(cfg, mesh) if cfg.distill.teacher else None
    if teacher is not None:
        print_primary(f"[ifp] distilling from {cfg.distill.teacher} (top {cfg.distill.top_k} "
                      f"tokens, weight {cfg.distill.weight})")

    restored = ckpt.restore_latest(layout.abstract)
    if restored is not None:
        start, state, data_state = restored
        batches.set_state(data_state)
        events = RunEvents.from_state(data_state.get("events"))
        events.restarts += 1
        print_primary(f"[ifp] resumed {workdir} at step {start}")
    else:
        start = 0
        events = RunEvents()
        state = create_state(model, cfg, tx, layout=layout, mesh=mesh,
                             params_override=stage_init(cfg, mesh))
        state = _prepare_selection(state, cfg, mesh, model, batches, batch_specs)
    events.skipped_checkpoints += ckpt.skipped_steps
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
    print_primary(f"[ifp] {cfg.name}: LLM {count(state.params['decoder'])/1e6:.2f}M params, "
                  f"predictor {count(state.params['predictor'])/1e6:.2f}M, mode={cfg.pruning.mode},"
                  f" k={cfg.pruning.keep_k}/{cfg.model.d_ffn}, mesh={dict(mesh.shape)}, "
                  f"processes={jax.process_count()}, {cfg.train.steps} steps")

    # Setup's transients (compiling, restoring, initialising) were freed but, under the malloc
    # tunables, are still resident and too fragmented for the step's temporaries: return them.
    host_malloc.release_free_memory()
    grew = host_memory.GrowthWatch()
    writer = MetricsWriter(workdir, cfg.train.steps, label=cfg.name)
    ctx = LoopContext(cfg=cfg, workdir=workdir, model=model, mesh=mesh, writer=writer,
                      task_names=batches.task_names,
                      data_state=lambda: {**batches.get_state(), "events": events.as_dict()})
    saver = SaveCheckpoint(every_steps=cfg.checkpoint.every_steps,
                           every_minutes=cfg.checkpoint.every_minutes, checkpointer=ckpt)
    all_hooks = [LogMetrics(every=1), saver, *hooks]
    preempt = _Preemption()
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    window: dict[str, Any] | None = None
    window_steps, step, data_seconds = 0, start, 0.0
    writer.start_window(start)

    def end_window(step: int) -> dict:
        """The metrics of the steps since the last window ended (host sync; every process)."""
        nonlocal window, window_steps, data_seconds
        metrics = metric.compute(window, {"task_loss": batches.task_names})
        events.add_window(metrics)
        metrics.update(events.metrics())
        _check_finite(metrics, step, cfg.train.nan_policy)
        metrics.update(writer.rate(step, tokens_per_step * window_steps, data_seconds))
        writer.start_window(step)
        window, window_steps, data_seconds = None, 0, 0.0
        lock.check_held()
        return metrics

    progress["training"] = True  # from here on the workdir holds the run's own output
    try:
        for hook in all_hooks:
            hook.begin(ctx, step, state)
        while step < cfg.train.steps:
            fetch_start = time.perf_counter()
            host = next(batches)
            data_seconds += time.perf_counter() - fetch_start
            batch = {k: jax.make_array_from_process_local_data(batch_specs[k].sharding, host[k])
                     for k in STEP_KEYS}
            if teacher is not None:
                batch.update(teacher(batch))
            state, step_metrics = step_fn(state, batch)
            step += 1
            window = metric.merge(window, step_metrics)
            window_steps += 1
            last = step == cfg.train.steps
            metrics: dict = {}
            # Windows also end at checkpoint steps, so the fault counts saved are exact.
            if (step % cfg.train.log_every == 0 or step % cfg.checkpoint.every_steps == 0
                    or last):
                metrics = end_window(step)
            for hook in all_hooks:
                if hook.every and step % hook.every == 0:
                    hook(ctx, step, state, metrics)
            # Host work between steps (a window's end: metrics, saves, evaluations; the first
            # steps' small compiles) can split the free memory of the step's temporaries, and
            # the next step would then take them anew beside it: return it to the kernel.
            if grew.grew() or metrics:  # (compared before the release: a steady step
                host_malloc.release_free_memory()  # refaults what it gave back, no more)
            if preempt.reached(step):  # once per step on every process (the agreement's rule)
                if window is not None:
                    ctx.writer.write(step, end_window(step))
                saver.save_now(ctx, step, state)
                print_primary(f"[ifp] preemption notice (SIGTERM): checkpoint saved at step "
                              f"{step} by all {jax.process_count()} process(es); exiting with "
                              f"{EXIT_PREEMPTED} (rerun to resume)")
                raise SystemExit(EXIT_PREEMPTED)
        if start >= cfg.train.steps:
            print_primary(f"[ifp] {workdir} already trained to step {start} "
                          f"(train.steps={cfg.train.steps})")
        for hook in all_hooks:
            hook.end(ctx, step, state)
        print_primary(f"[ifp] {events.summary(step)}")
    finally:
        batches.close()  # stops data workers, if any
        ckpt.close()
        preempt.restore()
        writer.close()
    return state
