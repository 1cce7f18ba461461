"""Chaos resume: SIGKILL `ifp train` at random moments, rerun the same command, compare bitwise.

`run()` trains a tiny `tiny_multiskill` once uninterrupted, then again in a fresh workdir that
it kills with SIGKILL `kills` times, rerunning the same command after each kill until the last
attempt runs to the end. Each kill targets one phase:
  startup  a random moment after launch (imports, compilation, restore of the last checkpoint),
  step     a few ms after a step's log line (the next steps are running),
  save     50-400 ms after the log line of a checkpoint step (the async save is being written),
  eval     0.5-4 s after the log line of an evaluation step (the held-out evaluation is running).
With 2 processes a kill takes process 0, process 1 or both (a lost host); a survivor must exit on
its own within the heartbeat bound. At the end, every per-step loss the killed run logged
(steps logged twice, before and after a kill, included) and the final params and evaluation
must equal the uninterrupted run's bitwise, and metrics.jsonl must parse line by line.

The kill plan follows from the seed; the plan and each kill's actual moment are printed, so a
failure replays with the same command (a kill may land some ms apart on a loaded machine, in
the same phase):  python -m tests.chaos --processes 2 --seed 2 --workdir /tmp/chaos

`Scale` sets the run's length and cadence and the kill windows: FULL (the slow test), SMALL with
SMALL_PHASES (the CI test in tests/test_chaos_resume.py; replay with --small).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from tests.helpers import TINY_OVERRIDES, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES_PER_PROCESS = 2
HEARTBEAT = 10  # seconds: how long a survivor may wait for a killed peer
ATTEMPT_TIMEOUT = 900  # seconds: an attempt that neither ends nor gets killed is a hang
PHASES = ("startup", "step", "save", "eval")
_STEP_LINE = re.compile(r"^\[tiny_multiskill\] step (\d+)/\d+ \| (loss|eval-EM)")


@dataclasses.dataclass(frozen=True)
class Scale:
    """The run the scenario kills: its length, save and eval cadence, and the kill windows."""

    steps: int = 60
    save_every: int = 3
    eval_every: int = 10  # 0: evaluate only at the end (no eval-phase kills possible)
    anneal: int = 30  # pruning.temperature_anneal_steps
    startup: tuple[float, float] = (3.0, 40.0)  # startup kills: seconds after launch
    step_occurrence: tuple[int, int] = (1, 4)  # step kills: after the n-th plain step's line
    save_delay: tuple[float, float] = (0.05, 0.4)  # save kills: seconds after the line


FULL = Scale()  # tests/test_chaos_resume.py (slow): 60 steps, 10 kills
# The CI scenario (test_chaos_resume.py, not slow): 12 steps, evaluated at the end only; step kills
# within two plain steps of a launch; save kills 0-50 ms after the checkpoint step's log line (on
# the 2-core VM the async save of the tiny state finished 170-1070 ms after it, so the kill lands
# mid-save); startup kills in the 2-8 s of imports and compilation-cache reads before a restore.
SMALL = Scale(steps=12, save_every=3, eval_every=0, anneal=6, startup=(2.0, 8.0),
              step_occurrence=(1, 2), save_delay=(0.0, 0.05))
SMALL_PHASES = ("save", "step", "startup")  # its kills, in this order


@dataclasses.dataclass
class Kill:
    phase: str  # startup | step | save | eval
    victims: tuple[int, ...]  # process ids to SIGKILL
    occurrence: int  # kill after the n-th log line of a step of this phase (startup: unused)
    delay: float  # seconds after that line (startup: after launch)

    def describe(self) -> str:
        kind = {"step": "plain", "save": "checkpoint", "eval": "evaluation"}.get(self.phase)
        where = ("after launch" if self.phase == "startup"
                 else f"after this attempt's {_ordinal(self.occurrence)} {kind} step's log line")
        return f"{self.phase:7s} kill process(es) {self.victims} {self.delay:.3f}s {where}"


def _ordinal(n: int) -> str:
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n, 'th') }"


def plan(kills: int, processes: int, seed: int, scale: Scale = FULL,
         phases: tuple[str, ...] | None = None) -> list[Kill]:
    """`kills` kills spread over the four phases (each at least twice for kills >= 8), or
    over `phases` in that order (one kill each)."""
    rng = random.Random(seed)
    if phases is None:
        phases = list(PHASES) * (kills // 4)
        phases += rng.sample(["step", "save", "save", "eval"], kills - len(phases))
        rng.shuffle(phases)
    assert len(phases) == kills, (phases, kills)
    assert scale.eval_every or "eval" not in phases, "no eval-phase kill without train.eval_every"
    out = []
    for phase in phases:
        victims = (0,) if processes == 1 else rng.choice([(0,), (1,), (0, 1)])
        occurrence, delay = {"startup": (0, rng.uniform(*scale.startup)),
                             "step": (rng.randint(*scale.step_occurrence), rng.uniform(0.0, 0.05)),
                             "save": (rng.randint(1, 2), rng.uniform(*scale.save_delay)),
                             "eval": (1, rng.uniform(0.5, 4.0))}[phase]
        out.append(Kill(phase, victims, occurrence, delay))
    return out


def _phase_of_step(step: int, scale: Scale) -> str:
    if scale.eval_every and step % scale.eval_every == 0 and step < scale.steps:
        return "eval"
    return "save" if step % scale.save_every == 0 else "step"


def _command(workdir: str, processes: int, process_id: int, port: int,
             scale: Scale) -> list[str]:
    cmd = [sys.executable, "-m", "ifp_jax", "train", "tiny_multiskill", "--workdir", workdir,
           *TINY_OVERRIDES, f"train.steps={scale.steps}",
           f"checkpoint.every_steps={scale.save_every}", f"train.eval_every={scale.eval_every}",
           # Async saves, as on accelerators (on CPU "auto" saves synchronously): the kills
           # must find a write in flight while training goes on.
           "checkpoint.async_save=true",
           f"pruning.temperature_anneal_steps={scale.anneal}",
           f"mesh.data={DEVICES_PER_PROCESS * processes}"]
    if processes > 1:
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                "--process-id", str(process_id), "--heartbeat-timeout", str(HEARTBEAT),
                "--init-timeout", str(HEARTBEAT * 3)]  # a peer killed before it connected
    return cmd


def _env(cache_dir: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=cache_dir,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}")
    env.pop("IFP_DEBUG", None)
    return env


class _Attempt:
    """One launch of the command on every process; process 0's lines are timestamped."""

    def __init__(self, workdir: str, processes: int, log_dir: str, label: str, cache_dir: str,
                 scale: Scale):
        port = free_port()
        self.started = time.monotonic()
        self.lines: queue.Queue = queue.Queue()
        self.logs = [open(os.path.join(log_dir, f"{label}.p{i}.log"), "w")
                     for i in range(processes)]
        self.procs = [subprocess.Popen(
            _command(workdir, processes, i, port, scale), cwd=ROOT, env=_env(cache_dir),
            stdout=subprocess.PIPE if i == 0 else self.logs[i], stderr=subprocess.STDOUT,
            text=True, start_new_session=True) for i in range(processes)]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.procs[0].stdout:
            self.logs[0].write(line)
            self.logs[0].flush()
            self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put(None)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill(self, victims) -> None:
        for i in victims:
            if self.procs[i].poll() is None:
                os.killpg(self.procs[i].pid, signal.SIGKILL)

    def wait_all(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(range(len(self.procs)))
                raise AssertionError(f"a process did not exit within {timeout:.0f}s (a hang); "
                                     f"logs in {os.path.dirname(self.logs[0].name)}") from None
        for log in self.logs:
            log.close()
        return [p.returncode for p in self.procs]


def _run_to_end(workdir, processes, log_dir, label, cache_dir, scale) -> None:
    attempt = _Attempt(workdir, processes, log_dir, label, cache_dir, scale)
    codes = attempt.wait_all(ATTEMPT_TIMEOUT)
    assert codes == [0] * processes, (f"{label}: exit codes {codes}; see "
                                      f"{attempt.logs[0].name}")


def _kill_once(kill: Kill, workdir, processes, log_dir, label, cache_dir, scale) -> str:
    """Launches, kills as planned, waits for every process to be gone; returns what was hit."""
    attempt = _Attempt(workdir, processes, log_dir, label, cache_dir, scale)
    seen, last, target = 0, "", None
    while True:
        if kill.phase == "startup":
            wait = kill.delay - attempt.elapsed()
        else:
            wait = ATTEMPT_TIMEOUT - attempt.elapsed()
        try:
            item = attempt.lines.get(timeout=max(0.0, wait))
        except queue.Empty:
            break  # the startup kill's moment
        if item is None:  # process 0 exited before the planned moment
            codes = attempt.wait_all(HEARTBEAT + 90)
            return f"not killed: the run ended first (exit codes {codes})"
        last = item[1]
        match = _STEP_LINE.match(last)
        if kill.phase != "startup" and match and match.group(2) == "loss":
            if _phase_of_step(int(match.group(1)), scale) == kill.phase:
                seen += 1
                if seen == kill.occurrence:
                    target = int(match.group(1))
                    time.sleep(max(0.0, kill.delay - (time.monotonic() - item[0])))
                    break
    at = attempt.elapsed()
    attempt.kill(kill.victims)
    attempt.wait_all(HEARTBEAT + 90)  # survivors must exit on their own (heartbeat)
    return f"killed at {at:.2f}s, {_what_was_hit(kill, target, last, attempt, workdir)}"


def _what_was_hit(kill: Kill, target, last: str, attempt: _Attempt, workdir: str) -> str:
    later = []
    while not attempt.lines.empty():
        item = attempt.lines.get()
        if item is not None:
            later.append(item[1])
    if kill.phase == "startup":
        return f"last line: {last[:90]!r}"
    if kill.phase == "eval":
        done = any(_STEP_LINE.match(x) and "eval-EM" in x and f"step {target}/" in x
                   for x in later)
        return f"step {target}'s evaluation {'had finished' if done else 'was running'}"
    if kill.phase == "save":
        names = os.listdir(os.path.join(workdir, "checkpoints"))
        finished = str(target) in names
        torn = [n for n in names if n.startswith(f"{target}.")]
        return (f"step {target}'s save " + ("had finished" if finished else
                                             "was torn" if torn else "had not started writing"))
    return f"after step {target}"


def _losses(workdir: str) -> dict[int, list[float]]:
    """step -> every loss metrics.jsonl holds for it (several after a kill and a replay)."""
    out: dict[int, list[float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise AssertionError(f"{workdir}/metrics.jsonl line {n} is not JSON: "
                                     f"{line[:80]!r}") from None
            if "loss" in row:
                out.setdefault(int(row["step"]), []).append(row["loss"])
    return out


def final_params(workdir: str, step: int = FULL.steps) -> dict:
    """Checkpoint `step`'s params as numpy arrays, flattened to 'path/to/leaf' keys."""
    import logging

    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    logging.getLogger("absl").setLevel(logging.ERROR)  # "no step metadata" for a bare item
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        tree = ckptr.restore(path, restore_args=args)
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def compare(reference: str, chaotic: str, scale: Scale = FULL) -> str:
    """Asserts the killed run ended bitwise where the uninterrupted one did; a summary line."""
    ref, got = _losses(reference), _losses(chaotic)
    assert sorted(got) == list(range(1, scale.steps + 1)), f"steps logged: {sorted(got)}"
    replays = 0
    for step, values in sorted(got.items()):
        replays += len(values) - 1
        for v in values:
            assert v == ref[step][0], (f"step {step}: loss {v!r} after kills, {ref[step][0]!r} "
                                       f"uninterrupted")
    a, b = final_params(reference, scale.steps), final_params(chaotic, scale.steps)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"final params differ at {key}"
    with open(os.path.join(reference, "eval_results.json")) as f, \
            open(os.path.join(chaotic, "eval_results.json")) as g:
        assert json.load(f) == json.load(g), "final evaluations differ"
    return (f"{scale.steps} steps' losses (and {replays} replayed step losses), "
            f"{len(a)} param arrays and the final evaluation equal bitwise")


def run(root: str, processes: int = 1, kills: int = 10, seed: int = 0, log=print,
        scale: Scale = FULL, phases: tuple[str, ...] | None = None) -> list[str]:
    """The scenario; returns each kill's description + what it hit. Raises AssertionError.
    `scale` and `phases` (one kill per entry, in order) shrink it (SMALL, SMALL_PHASES)."""
    os.makedirs(root, exist_ok=True)
    cache_dir, logs = os.path.join(root, "xla_cache"), os.path.join(root, "logs")
    os.makedirs(logs, exist_ok=True)
    reference, chaotic = os.path.join(root, "reference"), os.path.join(root, "chaotic")
    for d in (reference, chaotic):
        shutil.rmtree(d, ignore_errors=True)
    kills_planned = plan(kills, processes, seed, scale, phases)
    small = " --small" if (scale, phases) == (SMALL, SMALL_PHASES) else ""
    log(f"[chaos] seed {seed}, {processes} process(es), {kills} kills; replay: python -m "
        f"tests.chaos --processes {processes} --kills {kills} --seed {seed}{small}")
    t0 = time.monotonic()
    _run_to_end(reference, processes, logs, "reference", cache_dir, scale)
    log(f"[chaos] uninterrupted reference run: {time.monotonic() - t0:.0f}s")
    report = []
    for n, kill in enumerate(kills_planned, 1):
        outcome = _kill_once(kill, chaotic, processes, logs, f"attempt{n:02d}", cache_dir, scale)
        report.append(f"{kill.describe()}: {outcome}")
        log(f"[chaos] {n:2d}. {report[-1]}")
    _run_to_end(chaotic, processes, logs, "final", cache_dir, scale)
    summary = compare(reference, chaotic, scale)
    log(f"[chaos] {summary}; {time.monotonic() - t0:.0f}s in all")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, choices=[1, 2], default=1)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/ifp_chaos")
    p.add_argument("--small", action="store_true",
                   help=f"the CI scenario: {SMALL.steps} steps, kills {', '.join(SMALL_PHASES)}")
    a = p.parse_args()
    if a.small:
        run(a.workdir, a.processes, len(SMALL_PHASES), a.seed, scale=SMALL, phases=SMALL_PHASES)
    else:
        run(a.workdir, a.processes, a.kills, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
