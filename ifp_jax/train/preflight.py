"""Checks before training starts: the workdir is writable, and the checkpoints it will hold fit
on its disk; plus the up-front estimate of device memory and disk the run needs (printed)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax

from ifp_jax import host_malloc
from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.host_memory import process_tree_rss_mib
from ifp_jax.storage import paths

GB = 1e9
MIB = 1 << 20


def check_workdir_writable(workdir: str) -> None:
    """Creates `workdir` and writes, syncs and removes a probe file in it; a one-line
    ConfigError naming the cause otherwise (a file in the way, no permission, read-only disk).
    A `gs://` workdir has no local directory to check."""
    if paths.is_remote(workdir):
        return  # its bucket was checked before anything touched it (train/loop.py)
    probe = os.path.join(workdir, f".ifp_write_probe.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ifp")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"workdir {workdir} is not writable ({type(e).__name__}: "
                          f"{e.strerror or e}); choose another --workdir or fix its "
                          f"permissions") from None


def _array_bytes(state: Any) -> list[int]:
    return [x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)
            if hasattr(x, "dtype")]


def state_bytes(state: Any) -> int:
    """Bytes of one checkpoint: every array of the train state (params, optimizer moments);
    `state` concrete or abstract."""
    return sum(_array_bytes(state))


def largest_array_bytes(state: Any) -> int:
    """Bytes of the state's largest array."""
    return max(_array_bytes(state), default=0)


def save_bytes(abstract_state: Any, is_async: bool, write_limit_gb: int | None) -> int:
    """Host memory a checkpoint save adds while it runs: an async save's copy of the whole
    state, or a synchronous save's arrays in flight to disk (at most the write limit)."""
    whole = state_bytes(abstract_state)
    if is_async or write_limit_gb is None:
        return whole
    return min(whole, int(write_limit_gb * GB))


def check_disk(workdir: str, checkpoint_bytes: int, keep: int, free_bytes: int | None = None
               ) -> str:
    """The disk estimate as a line to print; a one-line ConfigError when not even one more
    checkpoint fits. Up to keep + 1 checkpoints exist at once (the newest is written before
    the oldest is deleted)."""
    peak = checkpoint_bytes * (keep + 1)
    if paths.is_remote(workdir) and free_bytes is None:
        return (f"checkpoints {checkpoint_bytes / GB:.3g} GB each, up to {keep + 1} at once "
                f"({peak / GB:.3g} GB) in {workdir} (a bucket: no free-space check)")
    free = shutil.disk_usage(workdir).free if free_bytes is None else free_bytes
    line = (f"checkpoints {checkpoint_bytes / GB:.3g} GB each, up to {keep + 1} at once "
            f"({peak / GB:.3g} GB); {free / GB:.3g} GB free in {workdir}")
    if free < checkpoint_bytes:
        raise ConfigError(f"{workdir} has {free / GB:.3g} GB free but one checkpoint needs "
                          f"{checkpoint_bytes / GB:.3g} GB; free space or choose another "
                          f"--workdir")
    if free < peak:
        line += (f"; WARNING: fewer than {keep + 1} fit: lower checkpoint.keep or free space "
                 f"before the run reaches its {keep + 1}th save")
    return line


def step_memory(compiled: Any) -> Any:
    """XLA's memory analysis of the compiled train step, or None where the backend has none."""
    try:
        return compiled.memory_analysis()
    except (AttributeError, NotImplementedError):
        return None


def step_bytes(mem: Any) -> int:
    """Bytes one device holds while the step runs: state and batch, outputs not aliased to
    them (the state is donated), temporaries and the generated code."""
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)


def device_memory_line(compiled: Any, cfg: ExperimentConfig) -> str:
    """Per-device memory of the compiled train step (XLA's own analysis), as a line to print."""
    mem = step_memory(compiled)
    if mem is None:
        return f"{cfg.name}: no memory analysis from this backend"
    args, temp = mem.argument_size_in_bytes / GB, mem.temp_size_in_bytes / GB
    return (f"train step needs {step_bytes(mem) / GB:.3g} GB per device (state and batch "
            f"{args:.3g}, temporaries {temp:.3g})")


def host_memory_line(compiled: Any, save: int) -> str | None:
    """Where the devices are this host's CPU, the host memory the run should peak at: what the
    process holds now (Python, the libraries, data tasks, compiled code; the state does not
    exist yet), plus the step's need, plus what a checkpoint save adds (`save_bytes`). None on
    accelerators (their memory is the line above)."""
    mem = step_memory(compiled)
    if mem is None or jax.default_backend() != "cpu":
        return None
    host_malloc.release_free_memory()  # what compiling freed is not held
    now, step = process_tree_rss_mib() * MIB, step_bytes(mem)
    return (f"host memory: {now / GB:.3g} GB held before the state exists + the step's "
            f"{step / GB:.3g} GB + a checkpoint save's {save / GB:.3g} GB = expect "
            f"a peak of {(now + step + save) / GB:.3g} GB RSS")
