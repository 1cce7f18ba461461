"""Transparent huge pages for XLA:CPU's per-execution buffers (glibc's malloc.hugetlb tunable).

XLA:CPU mallocs each execution's temporaries afresh and frees them afterwards. Buffers that big
are mapped from the kernel by malloc and unmapped on free, so every train step touches all of
its temporaries as new 4 KiB pages: `tiny_facts`' dense step (110 MB of temporaries) took 26,800
page faults per step, and the kernel's share of its CPU time was about a third. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` malloc asks for transparent huge pages (madvise), which
the kernel's default THP mode ("madvise") grants: about 300 faults per step, and the step ran
1.36-1.39x faster (README, "Huge pages on CPU hosts").

glibc reads tunables only when a process starts, so the `ifp` command re-executes itself once,
with the tunable added, before it does any work (same PID, same arguments). Nothing happens
where it cannot help: not glibc >= 2.35, THP disabled ("never"), the tunable already set, or
IFP_MALLOC_HUGEPAGES=0.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "IFP_MALLOC_HUGEPAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_tunable() -> bool:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False
    try:
        return tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def _thp_enabled() -> bool:
    try:
        with open(THP_MODE) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def useful(environ=os.environ) -> bool:
    """Whether re-executing with the tunable would change anything here."""
    return (sys.platform.startswith("linux") and environ.get(OPT_OUT, "1") != "0"
            and "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")
            and _glibc_has_tunable() and _thp_enabled())


def with_tunable(environ) -> dict:
    """A copy of `environ` whose GLIBC_TUNABLES also holds TUNABLE (the user's kept)."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(x for x in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if x)
    return env


def reexec_with_hugepages() -> None:
    """Replaces this process by the same command with the tunable set, if `useful()`; returns
    only when it does nothing. Call before any work: nothing that ran is kept."""
    if not useful():
        return
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, with_tunable(os.environ))
