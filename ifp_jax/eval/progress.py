"""Progress of one evaluation on stderr: examples done / total, examples/s, ETA.

On a terminal a rich progress bar (rich is a dependency already); elsewhere (a log file, a
pipe, a TPU job's log) a plain line at most every `every_seconds` and one at the end, like the
training loop's log lines. Process 0 only: the other processes of a multi-host job keep silent.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import jax
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text("? ex/s" if task.speed is None else f"{task.speed:.1f} ex/s")


class EvalProgress:
    """Context manager: `advance(n)` after each batch of n examples.

    label: what is evaluated (e.g. 'exact match, 11 tasks'); total: examples to evaluate.
    stream: where to write (default stderr); a stream that is not a terminal gets plain lines.
    """

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 every_seconds: float = 30.0):
        self.label, self.total, self.done = label, total, 0
        self.every_seconds = every_seconds
        self._stream = stream or sys.stderr
        self._enabled = jax.process_index() == 0
        self._console = Console(file=self._stream, stderr=stream is None)
        self._bar: Progress | None = None
        self._t0 = self._last_line = time.monotonic()

    def __enter__(self) -> "EvalProgress":
        self._t0 = self._last_line = time.monotonic()
        if self._enabled and self._console.is_terminal:
            self._bar = Progress(TextColumn("[eval] {task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("examples"), _RateColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self._console, redirect_stdout=False,
                                 redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done = min(self.done + n, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif (self._enabled and self.done < self.total  # the last line is __exit__'s
              and time.monotonic() - self._last_line >= self.every_seconds):
            self._print_line()

    def line(self, final: bool = False) -> str:
        """'[eval] LABEL: 256/1408 examples | 4.2 ex/s | ETA 4m34s' (final: the elapsed time)."""
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"[eval] {self.label}: {self.done}/{self.total} examples", f"{rate:.1f} ex/s"]
        if final:
            parts.append(f"took {format_duration(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return " | ".join(parts)

    def _print_line(self, final: bool = False) -> None:
        print(self.line(final), file=self._stream, flush=True)
        self._last_line = time.monotonic()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._enabled:
            self._print_line(final=True)
