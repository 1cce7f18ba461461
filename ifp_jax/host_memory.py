"""Host memory of this process and its descendants (grain workers), from /proc (Linux)."""

from __future__ import annotations

import os


def rss_mib(pids: list[int]) -> float:
    """Resident set size of the given processes, MiB (VmRSS from /proc/PID/status); processes
    that have exited count 0. 0 where /proc does not exist (not Linux)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), whichever of its threads started it
    (grain starts its workers from a background thread, so the main thread's list misses them)."""
    found, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(p) for p in f.read().split()]
            except FileNotFoundError:
                continue
            found += kids
            todo += kids
    return found


def process_tree_rss_mib() -> float:
    """Resident set of this process plus all its descendants (data workers), MiB."""
    return rss_mib([os.getpid()] + descendants())


class GrowthWatch:
    """Whether this process's resident memory grew since the last call (by more than `slack`,
    a fraction): the training loop returns freed memory to the kernel after a step that took
    new memory (warming up, or host work that split the free memory of the step's buffers),
    and not after the steady steps that reuse theirs."""

    def __init__(self, slack: float = 0.03):
        self.slack = slack
        self.last = rss_mib([os.getpid()])

    def grew(self) -> bool:
        now = rss_mib([os.getpid()])
        grew, self.last = now > self.last * (1 + self.slack), now
        return grew
