"""Joining a multi-process JAX job (one process per host, or per GPU) before any device is used.

Resolution order:
  1. explicit `--coordinator HOST:PORT --num-processes N --process-id I` (or the environment
     variables IFP_COORDINATOR / IFP_NUM_PROCESSES / IFP_PROCESS_ID);
  2. a cluster JAX detects by itself: Cloud TPU VMs and pods (GCE, GKE), SLURM (srun), Open MPI;
  3. otherwise one process.
Failures are one line with the fix and come within a bounded time: a coordinator nobody answers
at, processes that never join or disagree on the process count fail after at most
`init_timeout` seconds (ifp_jax/rendezvous.py checks this before JAX's own join, which would
abort with a C++ stack trace); a process that dies later
makes the others exit after at most `heartbeat_timeout` seconds (JAX's coordination service stops
the survivors), never a hang.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from ifp_jax import rendezvous
from ifp_jax.config import ConfigError

ENV_COORDINATOR = "IFP_COORDINATOR"
ENV_NUM_PROCESSES = "IFP_NUM_PROCESSES"
ENV_PROCESS_ID = "IFP_PROCESS_ID"


def _int_or_none(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, init_timeout: int = 120,
               heartbeat_timeout: int = 60) -> None:
    """Initialises jax.distributed if this is a multi-process job (see module doc)."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_or_none(os.environ.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _int_or_none(os.environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    explicit = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(explicit):
        if not all(explicit):
            raise ConfigError("--coordinator, --num-processes and --process-id go together "
                              "(or IFP_COORDINATOR / IFP_NUM_PROCESSES / IFP_PROCESS_ID); "
                              "set all three on every process")
        if ":" not in coordinator:
            raise ConfigError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. "
                              f"10.0.0.2:1234 (process 0's address)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} must be in 0..{num_processes - 1} "
                              f"(--num-processes {num_processes})")
        if num_processes == 1:
            return
        rendezvous.handshake(coordinator, num_processes, process_id, init_timeout)
        _join(dict(coordinator_address=coordinator, num_processes=num_processes,
                   process_id=process_id), init_timeout, heartbeat_timeout,
              f"{num_processes} processes via coordinator {coordinator}")
        return
    if os.environ.get("SLURM_NTASKS", "1") == "1" and "SLURM_JOB_ID" in os.environ:
        return  # a one-task SLURM job is one process
    try:
        _join({}, init_timeout, heartbeat_timeout, "the cluster JAX detected", detect=True)
    except _NoCluster:
        return


class _NoCluster(Exception):
    pass


def _join(kwargs: dict, init_timeout: int, heartbeat_timeout: int, what: str,
          detect: bool = False) -> None:
    if jax.distributed.is_initialized():
        return
    # Cross-process collectives of the CPU backend need a transport (gloo ships with jaxlib);
    # the setting does nothing to TPU or GPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        # A process that exits early (an error) waits at most heartbeat_timeout at the shutdown
        # barrier too, so a failed job ends within a bound on every process.
        jax.distributed.initialize(initialization_timeout=init_timeout,
                                   heartbeat_timeout_seconds=heartbeat_timeout,
                                   shutdown_timeout_seconds=heartbeat_timeout, **kwargs)
    except ValueError as e:
        if detect and "coordinator_address" in str(e):
            raise _NoCluster() from None
        raise ConfigError(f"joining {what} failed: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError / DEADLINE_EXCEEDED, as one line
        if detect and "must be called before" in str(e):
            # JAX already runs in this process (ifp called from Python, e.g. tests or a
            # notebook): too late to join a cluster, and no explicit job was asked for.
            raise _NoCluster() from None
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(
            f"joining {what} failed within {init_timeout}s ({first}); start every process with "
            f"the same --coordinator (process 0's HOST:PORT, reachable from all) and "
            f"--num-processes, each with its own --process-id") from None
    if jax.process_index() == 0:
        print(f"[ifp] joined {what}: {jax.process_count()} processes, "
              f"{jax.device_count()} devices ({jax.local_device_count()} local)",
              file=sys.stderr, flush=True)



def agree_with_primary(flag: bool) -> bool:
    """Process 0's `flag` on every process (one broadcast; no collective with one process).
    Every process must call it at the same point."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (one all-gather; every process calls
    it at the same point)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def on_primary(fn, *args, **kwargs):
    """Runs `fn` on process 0 only (e.g. writing config.json), then tells every process whether
    it succeeded: a ConfigError there is raised on all processes, so none goes on alone."""
    error = None
    result = None
    if jax.process_index() == 0:
        try:
            result = fn(*args, **kwargs)
        except ConfigError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if failed and error is None:
            error = ConfigError("process 0 refused the job (its first line of output says why)")
    if error is not None:
        raise error
    return result
