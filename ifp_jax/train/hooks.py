"""Callbacks the training loop calls; the loop itself knows nothing of eval, files or profilers.

A hook has `every` (call every that many steps; 0 = only at the end), `begin(ctx, step, state)`
(once, before the first step of this run or resumption) and `__call__(ctx, step, state, metrics)`. `metrics` holds the computed metrics of the logging window
that ended at this step (empty dict between logging steps). `end(ctx, step, state)` runs once when
the loop finishes normally. Hooks run on every process (orbax saves and evaluations are
collective); only process 0 writes files of its own.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from ifp_jax import distributed
from ifp_jax.config import ExperimentConfig
from ifp_jax.train.checkpoint import Checkpointer
from ifp_jax.train.metrics import MetricsWriter, print_primary


@dataclasses.dataclass
class LoopContext:
    """What hooks may read about the run."""

    cfg: ExperimentConfig
    workdir: str
    model: Any  # IFPModel
    mesh: Mesh
    writer: MetricsWriter
    task_names: list[str]
    data_state: Any  # callable () -> JSON-able data position


class Hook(Protocol):
    every: int

    def begin(self, ctx: LoopContext, step: int, state: Any) -> None: ...

    def __call__(self, ctx: LoopContext, step: int, state: Any, metrics: dict) -> None: ...

    def end(self, ctx: LoopContext, step: int, state: Any) -> None: ...


@dataclasses.dataclass
class LogMetrics:
    """Writes the window's metrics (terminal line, metrics.jsonl, TensorBoard)."""

    every: int

    def begin(self, ctx, step, state):
        pass

    def __call__(self, ctx, step, state, metrics):
        if metrics:
            ctx.writer.write(step, metrics)

    def end(self, ctx, step, state):
        pass


@dataclasses.dataclass
class SaveCheckpoint:
    """Saves state + data position every `every_steps` steps, and at a logged step when
    `every_minutes` passed since the last save (0 = off); at the end too (async; waited).

    The time rule is decided on process 0 and broadcast: clocks differ between hosts, and a save
    is collective, so every process must take the same decision at the same step. It is checked
    at logged steps only (where all processes already meet), so its granularity is
    train.log_every steps.
    """

    every_steps: int
    checkpointer: Checkpointer
    every_minutes: float = 0.0
    every: int = 1
    _last_save: float = dataclasses.field(default_factory=time.monotonic)

    def begin(self, ctx, step, state):
        self._last_save = time.monotonic()

    def __call__(self, ctx, step, state, metrics):
        if step % self.every_steps == 0 or (metrics and self._time_is_up()):
            self.save(ctx, step, state)

    def _time_is_up(self) -> bool:
        if not self.every_minutes:
            return False
        up = time.monotonic() - self._last_save >= self.every_minutes * 60
        return distributed.agree_with_primary(up)

    def save(self, ctx, step, state) -> None:
        self.checkpointer.save(step, state, ctx.data_state())
        self._last_save = time.monotonic()

    def save_now(self, ctx, step, state) -> None:
        """Saves `step` (unless this step's save already started) and waits for it."""
        if self.checkpointer.latest_step() != step:
            self.save(ctx, step, state)
        self.checkpointer.wait()

    def end(self, ctx, step, state):
        if self.checkpointer.latest_step() != step:
            self.save(ctx, step, state)
        self.checkpointer.wait()


@dataclasses.dataclass
class Profile:
    """Writes a jax.profiler trace of steps [start, stop) to DIR/profile (TensorBoard / XProf).

    The loop calls hooks after a step, so the trace starts after step start-1 and stops after
    step stop-1; `every=1` lets it see each boundary.
    """

    start: int
    stop: int
    every: int = 1
    _active: bool = False

    def begin(self, ctx, step, state):
        self(ctx, step, state, {})

    def __call__(self, ctx, step, state, metrics):
        if step == self.start - 1 and not self._active:
            jax.profiler.start_trace(os.path.join(ctx.workdir, "profile"))
            self._active = True
        elif step == self.stop - 1 and self._active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self._active = False
            print_primary(f"[ifp] profile of steps {self.start}..{self.stop - 1} written to "
                          f"{os.path.join(ctx.workdir, 'profile')} (tensorboard --logdir there)")

    def end(self, ctx, step, state):
        if self._active:
            jax.profiler.stop_trace()
            self._active = False


def parse_profile_steps(text: str) -> Profile:
    """'A:B' -> Profile of steps A..B-1 (1-based step numbers as the loop prints them)."""
    from ifp_jax.config import ConfigError
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--profile-steps {text!r} must look like A:B, e.g. 10:15") from None
    if not 1 <= a < b:
        raise ConfigError(f"--profile-steps {text!r}: need 1 <= A < B, e.g. 10:15")
    return Profile(start=a, stop=b)
