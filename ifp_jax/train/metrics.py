"""Metric sinks: terminal progress line, DIR/metrics.jsonl (one JSON object per logged step) and
TensorBoard event files (tensorboardX, so no TensorFlow session is needed to write them).

Both are flushed at every logged step, so a preempted run's metrics are there. In a `gs://`
workdir metrics.jsonl is rewritten whole at each logged step (an object cannot be appended to;
the file is small) and tensorboardX uploads its event file at each flush."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

from ifp_jax import workdir as workdir_lib
from ifp_jax.host_memory import process_tree_rss_mib
from ifp_jax.storage import paths


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsWriter:
    """Writes on the primary process only; other processes keep silent."""

    def __init__(self, workdir: str, total_steps: int, label: str = "train"):
        self.primary = jax.process_index() == 0
        self.total_steps = total_steps
        self.label = label
        self._jsonl = None
        self._tb = None
        if self.primary:
            paths.makedirs(workdir)
            path = workdir_lib.metrics_path(workdir)
            if paths.is_remote(path):
                self._jsonl = _ObjectLines(path)
            else:
                drop_torn_tail(path)
                self._jsonl = open(path, "a")
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(paths.join(workdir, workdir_lib.TENSORBOARD))
        self._t0 = time.time()
        self._window_start = (time.time(), None)

    def start_window(self, step: int) -> None:
        self._window_start = (time.time(), step)

    def rate(self, step: int, tokens: float, data_seconds: float = 0.0) -> dict:
        """Throughput since the window started: steps/s, tokens/s, the ETA of the run, the
        fraction of the window spent waiting for batches, and host memory (this process and
        its data workers: flat while the corpus streams)."""
        t0, s0 = self._window_start
        dt = max(time.time() - t0, 1e-9)
        steps = step - (s0 if s0 is not None else step)
        out = {"perf/steps_per_sec": steps / dt, "perf/tokens_per_sec": tokens / dt,
               "perf/data_wait_frac": data_seconds / dt,
               "perf/host_rss_mib": process_tree_rss_mib()}
        out["perf/eta_sec"] = ((self.total_steps - step) / (steps / dt)) if steps else float("nan")
        return out

    def write(self, step: int, metrics: dict, console: bool = True) -> None:
        if not self.primary:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            if math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()
        if console:
            print(self._line(step, clean), flush=True)

    def _line(self, step: int, m: dict) -> str:
        parts = [f"[{self.label}] step {step}/{self.total_steps}"]
        for key, fmt, name in (("loss", "{:.4f}", "loss"), ("balance_loss", "{:.3f}", "bal"),
                               ("perf/tokens_per_sec", "{:,.0f}", "tok/s"),
                               ("perf/data_wait_frac", "{:.0%}", "data-wait"),
                               ("perf/host_rss_mib", "{:,.0f}", "host-MiB"),
                               ("mask/lambda_kept_mean", "{:.2f}", "λkept"),
                               ("mask/overlap_within_task", "{:.2f}", "ovl-in"),
                               ("mask/overlap_across_tasks", "{:.2f}", "ovl-across"),
                               ("mask/units_used_frac", "{:.2f}", "used"),
                               ("eval/mean_exact_match", "{:.3f}", "eval-EM")):
            if key in m and math.isfinite(m[key]):
                parts.append(f"{name} {fmt.format(m[key])}")
        if "perf/eta_sec" in m:
            parts.append(f"ETA {_fmt_duration(m['perf/eta_sec'])}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.primary:
            self._jsonl.close()
            self._tb.close()


class _ObjectLines:
    """An append-only text file on an object store: the lines so far, uploaded whole at each
    flush (one upload replaces the object, so readers never see a torn line)."""

    def __init__(self, path: str):
        self.path = path
        self._text = paths.read_text(path) if paths.exists(path) else ""

    def write(self, line: str) -> None:
        self._text += line

    def flush(self) -> None:
        paths.write_atomic(self.path, self._text)

    def close(self) -> None:
        pass


def drop_torn_tail(path: str) -> None:
    """Cuts a last line without its newline (a run killed mid-write) so appends stay one JSON
    object per line; the complete lines before it are kept."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end, pos = 0, size
        while pos > 0:  # the last newline, reading backwards in 64 KiB blocks
            start = max(0, pos - (1 << 16))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                break
            pos = start
        f.truncate(end)
    print(f"[ifp] {path}: dropped a torn last line ({size - end} bytes) left by an interrupted "
          f"run", file=sys.stderr)


def print_primary(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True, file=sys.stdout)
