"""Orbax checkpoints of the train state plus the data iterator's position, and workdir checks.

Layout of a workdir:
    DIR/config.json            the resolved ExperimentConfig (written before any work)
    DIR/checkpoints/<step>/    orbax: `state` (TrainState, sharded arrays) + `data` (JSON)
    DIR/checksums/<step>.process_<i>.json   SHA-256 of the files process i wrote (checksums.py)
    DIR/metrics.jsonl, DIR/tb/ metrics

Orbax writes each step into a temporary directory and renames it when complete (on object
stores it writes a commit marker last), so a run killed mid-save leaves no step that looks
finished; a step whose files no longer match the checksums recorded after its save, or that
fails to restore, is reported and skipped (never deleted), and the next older one is tried.
Checksums (train/checksums.py) are recorded in a background thread once a save is finished,
and checked while the restore runs, each process its share; all processes then agree on the
step, so none restores a step another found damaged.

Checkpoints are topology-free: arrays are restored into the abstract state of the *restoring*
run (shapes + target shardings), so N processes on one mesh can save and M processes on another
mesh restore. `restore_latest_params` reads the params subtree only: stage chaining and eval of
a 9B source never load its Adam moments.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import shutil
import sys
import threading
from typing import Any

import orbax.checkpoint as ocp

import jax

from ifp_jax import config as config_lib
from ifp_jax import distributed, host_malloc
from ifp_jax import workdir as workdir_lib
from ifp_jax.config import CheckpointConfig, ConfigError, ExperimentConfig
from ifp_jax.storage import paths
from ifp_jax.train import checksums
from ifp_jax.train.preflight import GB, state_bytes
from ifp_jax.train.run_errors import (CheckpointWriteError, quiet_orbax_tracebacks,
                                     report_failed_save, short_cause)

# Config sections whose change makes an existing checkpoint unusable (shapes or meaning differ).
STRUCTURAL_KEYS = ("name", "model", "predictor", "pruning.keep_k", "pruning.mode")


def saves_async(cfg: CheckpointConfig) -> bool:
    """checkpoint.async_save resolved: "auto" is async except where JAX computes on the CPU.
    There an async save first copies the whole state (its buffers are donated to the next
    step), and the copy and the writer share the step's memory and cores: on SmolLM2 (1.69 GB
    state, 2 cores) it added 2.9 GB of RSS and saved no wall time over a synchronous save."""
    if cfg.async_save == "auto":
        return jax.default_backend() != "cpu"
    return bool(cfg.async_save)


def write_limit_gb(largest_array_bytes: int) -> int | None:
    """Where JAX computes on the CPU, the GB of arrays orbax may have in flight to disk at once
    (tensorstore's encoding buffers for them are what a save adds to the process: on SmolLM2's
    state +1.3 GB unbounded, +0.4 GB at 1 GB, and the write took half the time). orbax refuses
    an array at or above its limit, so the limit exceeds the largest array. None elsewhere:
    orbax's default, the host's memory is not the devices'."""
    if jax.default_backend() != "cpu" or largest_array_bytes <= 0:
        return None
    return max(1, math.ceil((largest_array_bytes + 1) / GB))


class Checkpointer:
    """Thin wrapper over orbax.CheckpointManager: save/restore state + data position."""

    def __init__(self, workdir: str, cfg: CheckpointConfig, largest_array_bytes: int = 0):
        """`largest_array_bytes` (of the state it will save) bounds, on CPU, the writes in
        flight (`write_limit_gb`); 0 leaves orbax's default (a checkpointer that only reads)."""
        self.directory = workdir_lib.checkpoints_dir(paths.absolute(workdir))
        self.checksum_dir = paths.join(paths.absolute(workdir), workdir_lib.CHECKSUMS)
        self.verify = cfg.verify
        self.skipped_steps = 0  # damaged or unreadable steps passed over by the last restore
        self._in_flight: int | None = None  # the step an async save is writing
        self._failed = False
        self._recorder: threading.Thread | None = None  # waits for a save, then records it
        self._recorder_error: BaseException | None = None
        quiet_orbax_tracebacks()
        self.is_async = saves_async(cfg)
        self.write_limit_gb = write_limit_gb(largest_array_bytes)
        # Both items named: orbax takes no handler by default once one is given.
        handlers = None if self.write_limit_gb is None else {
            "state": ocp.StandardCheckpointHandler(save_concurrent_gb=self.write_limit_gb),
            "data": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, item_handlers=handlers,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, enable_async_checkpointing=self.is_async, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Starts an (async) save; returns before the write completes when async is on. The
        previous save is finished first (orbax allows one in flight) and its checksums written.
        A save that cannot be written raises CheckpointWriteError, before writing anything when
        the disk has less free space than the state's size."""
        self._record_finished()
        need = state_bytes(state)
        # A bucket has no free-space figure; its quota errors come from the write itself.
        free = (float("inf") if paths.is_remote(self.directory)
                else shutil.disk_usage(self.directory).free)
        if free < need:
            self._fail(step, f"{free / GB:.3g} GB free, the state needs {need / GB:.3g} GB; "
                             f"nothing of it was written")
        # The last step's temporaries, freed but resident under the malloc tunables, are
        # handed back first: the writer's buffers would otherwise come on top of them (the
        # step faults them in again once).
        host_malloc.release_free_memory()
        self._in_flight = step
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                force=True)
        except Exception as e:  # noqa: BLE001 - any write failure stops the run, with its cause
            self._fail(step, short_cause(e))
        # Training goes on while orbax writes; this thread then records the checksums.
        self._recorder_error = None
        self._recorder = threading.Thread(target=self._finish_in_background,
                                          name="ifp-checkpoint-recorder", daemon=True)
        self._recorder.start()

    def _finish_in_background(self) -> None:
        try:
            self.manager.wait_until_finished()
            if self.verify:
                self._write_checksums()
        except BaseException as e:  # noqa: BLE001 - re-raised by the trainer's thread
            self._recorder_error = e

    def _fail(self, step: int, cause: str) -> None:
        self._failed = True
        report_failed_save()
        intact = [s for s in self.manager.all_steps() if s != step]
        kept = (f"the newest intact checkpoint is step {max(intact)}, where a rerun resumes"
                if intact else "no earlier checkpoint exists")
        raise CheckpointWriteError(
            f"checkpoint step {step} could not be written in {self.directory} ({cause}); the "
            f"run stopped and {kept}; free space (or set checkpoint.keep lower) and rerun")

    def _record_finished(self) -> None:
        """Waits for the save in flight and its checksums (written by the recorder thread; when
        no save is in flight, of every finished step that has none yet)."""
        try:
            if self._recorder is not None:
                self._recorder.join()
                self._recorder = None
                if self._recorder_error is not None:
                    raise self._recorder_error
            else:
                self.manager.wait_until_finished()
                if self.verify:
                    self._write_checksums()
        except CheckpointWriteError:
            raise
        except Exception as e:  # noqa: BLE001 - an async write failure surfaces here
            self._fail(self._in_flight, short_cause(e))
        self._in_flight = None

    def _write_checksums(self) -> None:
        process = jax.process_index()
        steps = self.manager.all_steps()
        for step in steps:
            if not checksums.has_record(self.checksum_dir, step, process):
                checksums.write_record(paths.join(self.directory, str(step)),
                                       self.checksum_dir, step, process)
        checksums.remove_stale_records(self.checksum_dir, set(steps), process)

    def _damaged(self, step: int) -> list[str]:
        """This process's share of the step's files that fail their checksums."""
        if not self.verify:
            return []
        return checksums.damaged_files(paths.join(self.directory, str(step)), self.checksum_dir,
                                       step, share=(jax.process_index(), jax.process_count())
                                       ) or []

    def _newest_readable(self, args) -> tuple[int, Any] | None:
        """(step, restored) of the newest step that restores with `args` and matches its
        checksums on every process; damaged or unreadable steps are reported and skipped,
        never deleted. The check runs beside the restore (same files: the second read is
        mostly served from the page cache), and a step is kept only if no process objects."""
        self.skipped_steps = 0
        for step in sorted(self.manager.all_steps(), reverse=True):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                check = pool.submit(self._damaged, step)
                restored, error = None, None
                try:
                    restored = self.manager.restore(step, args=args)
                except Exception as e:  # noqa: BLE001 - any unreadable step is skipped
                    error = e
                damaged = check.result()
            if not distributed.any_process(bool(damaged) or error is not None):
                return step, restored
            restored = None  # free its device memory before the next step is restored
            self.skipped_steps += 1
            if damaged:
                more = f" (+{len(damaged) - 1} more)" if len(damaged) > 1 else ""
                print(f"[ifp] checkpoint step {step}: {damaged[0]}{more} does not match the "
                      f"checksum recorded when it was saved (altered, truncated or missing); "
                      f"trying an older one", file=sys.stderr)
            elif error is not None:
                print(f"[ifp] checkpoint step {step} in {self.directory} is unreadable "
                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); trying an "
                      f"older one", file=sys.stderr)
            else:
                print(f"[ifp] checkpoint step {step}: another process found it damaged or "
                      f"unreadable; trying an older one", file=sys.stderr)
        return None

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest readable step into `abstract_state`'s shardings, or None."""
        found = self._newest_readable(ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        if found is None:
            return None
        step, out = found
        return step, out["state"], dict(out["data"])

    def restore_params(self, abstract_params: Any) -> tuple[int, Any] | None:
        """(step, params) of the newest readable step, reading only the `params` subtree."""
        item = {"params": abstract_params}
        restore_args = jax.tree_util.tree_map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                           dtype=a.dtype), item)
        found = self._newest_readable(ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))
        if found is None:
            return None
        return found[0], found[1]["state"]["params"]

    def wait(self) -> None:
        self._record_finished()

    def close(self) -> None:
        """Finishes the save in flight; after a failed save, only releases orbax's threads
        (the failure was already raised)."""
        if not self._failed:
            self._record_finished()
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - orbax re-raises the write failure we reported
            if not self._failed:
                raise


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not k == "rates":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def prepare_workdir(workdir: str, cfg: ExperimentConfig) -> None:
    """Writes config.json, or checks it against an existing run before anything is touched.

    A workdir holding checkpoints of another experiment, or of a different model/predictor/
    pruning shape, is refused with a one-line error (nothing is overwritten). Changes to other
    settings (e.g. train.steps to extend a run) are allowed; the previous config is kept as
    config.<n>.json.
    """
    paths.makedirs(workdir)
    path = workdir_lib.config_path(workdir)
    new = config_lib.to_dict(cfg)
    if paths.exists(path):
        try:
            old = json.loads(paths.read_text(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); move it away or use a new "
                              f"--workdir") from None
        directory = workdir_lib.checkpoints_dir(workdir)
        has_ckpt = any(n.isdigit() for n in paths.listdir(directory))
        changed = _changed_keys(old, new)
        if has_ckpt:
            if old.get("name") != cfg.name:
                raise ConfigError(
                    f"workdir {workdir} holds checkpoints of experiment '{old.get('name')}', not "
                    f"'{cfg.name}'; use a new --workdir (nothing was changed)")
            bad = [k for k in changed if any(k == s or k.startswith(s + ".")
                                             for s in STRUCTURAL_KEYS)]
            if bad:
                raise ConfigError(
                    f"workdir {workdir} holds checkpoints made with a different {bad[0]} "
                    f"({len(bad)} structural key(s) differ); use a new --workdir (nothing was "
                    f"changed)")
        if changed:
            n = 1
            while paths.exists(paths.join(workdir, f"config.{n}.json")):
                n += 1
            # Copy, then overwrite below (an object store has no rename).
            paths.write_atomic(paths.join(workdir, f"config.{n}.json"), paths.read_bytes(path))
            paths.write_atomic(path, config_lib.to_json(cfg))
            print(f"[ifp] config changed in {workdir}: {', '.join(changed[:8])}"
                  f"{' ...' if len(changed) > 8 else ''} (previous kept as config.{n}.json)")
    if not paths.exists(path):
        paths.write_atomic(path, config_lib.to_json(cfg))


def restore_latest_params(workdir: str, abstract_params: Any,
                          hint: str = "run `ifp train` there first") -> tuple[int, Any]:
    """(step, params) of `workdir`'s latest readable checkpoint, params subtree only, placed
    with `abstract_params`' shardings (see `train.state.params_layout`)."""
    ck = Checkpointer(workdir, CheckpointConfig(async_save=False))
    try:
        restored = ck.restore_params(abstract_params)
    finally:
        ck.close()
    if restored is None:
        raise ConfigError(f"no checkpoint in {workdir}/checkpoints: {hint}")
    return restored
