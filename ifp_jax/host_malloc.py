"""glibc malloc tuning for XLA:CPU's per-execution buffers: reuse them, in huge pages.

XLA:CPU mallocs each execution's temporaries afresh and frees them afterwards. By default glibc
serves buffers that big with their own mappings and unmaps them on free, so every train step
faults all of its temporaries in again as new pages. That costs twice:
  - in 4 KiB pages: `tiny_facts`' dense step (110 MB of temporaries) took 26,800 page faults per
    step, about a third of its CPU time in the kernel;
  - even in huge pages, memory handed back to the kernel can be slow to fault in again: on a VM
    (virtio balloon / free page reporting) the 50M bench's dense step spent 3.6 s of kernel time
    in ~2,000 huge-page faults when torch had run in between, and took 3.4-5.5 s instead of 2.6.
So the `ifp` command runs with:
  glibc.malloc.hugetlb=1        transparent huge pages for malloc's memory (madvise), if THP is on
  glibc.malloc.mmap_threshold   buffers under 64 MiB come from the heap ...
  glibc.malloc.trim_threshold   ... which is never trimmed back to the kernel (freed buffers are
                                reused by the next step: no page faults once warm), and
  glibc.malloc.arena_max=1      one heap, so a buffer freed by one thread is reused by any other
                                (per-thread arenas unmap their heaps when empty).
Buffers of 64 MiB and more keep their own mappings, returned when freed. In one heap they did
not stay reusable: host work between steps (data threads, metrics, a save) splits the free
space, the next step cannot fit them into it and grows the heap, and SmolLM2's SFT (1.75 GB of
temporaries, mostly in such buffers) peaked at 7.1 GB RSS instead of 5.1, and stepped slower
(103 tokens/s instead of 120). Faulting a buffer that big in again costs little next to the
step that fills it (in huge pages, a 51 MB buffer took 314 faults, tests/test_host_malloc.py).

glibc reads tunables only when a process starts, so the `ifp` command, where JAX computes on the
CPU, re-executes itself once with the tunables added, before it does any work (same PID, same
arguments). A tunable the user
set is kept as theirs. Nothing happens where it cannot help: not Linux with glibc >= 2.35, every
tunable already set, or IFP_MALLOC_HUGEPAGES=0 (the name predates the reuse settings; it turns
all of them off).
"""

from __future__ import annotations

import os
import platform
import sys

HUGEPAGES = "glibc.malloc.hugetlb=1"
MMAP_THRESHOLD = 64 << 20  # bytes: bigger buffers are mapped (and unmapped) each on their own
REUSE = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}", f"glibc.malloc.trim_threshold={1 << 40}",
         "glibc.malloc.arena_max=1")
OPT_OUT = "IFP_MALLOC_HUGEPAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_tunables() -> bool:
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


def tunables() -> tuple[str, ...]:
    """The tunables this host can use: REUSE, plus HUGEPAGES where THP is not 'never'."""
    return ((HUGEPAGES,) if _thp_enabled() else ()) + REUSE


def _missing(environ) -> list[str]:
    """Our tunables whose name the user's GLIBC_TUNABLES does not set."""
    theirs = {x.split("=")[0] for x in environ.get("GLIBC_TUNABLES", "").split(":") if x}
    return [t for t in tunables() if t.split("=")[0] not in theirs]


def useful(environ=os.environ) -> bool:
    """Whether re-executing with the tunables would change anything here."""
    return (sys.platform.startswith("linux") and environ.get(OPT_OUT, "1") != "0"
            and _glibc_has_tunables() and bool(_missing(environ)))


def with_tunables(environ) -> dict:
    """A copy of `environ` whose GLIBC_TUNABLES also holds our tunables (the user's kept, and
    winning where they set the same one)."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(x for x in (env.get("GLIBC_TUNABLES", ""),
                                                 *_missing(environ)) if x)
    return env


def reexec_with_tunables() -> None:
    """Replaces this process by the same command with the tunables set, if `useful()`; returns
    only when it does nothing. Call before any work: nothing that ran is kept."""
    if not useful():
        return
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, with_tunables(os.environ))


def release_free_memory() -> None:
    """Hands the heap's free pages back to the kernel (glibc `malloc_trim(0)`), where glibc is
    the allocator; a no-op elsewhere.

    With the tunables above nothing freed is ever returned, so a one-off peak (compiling,
    restoring an import: 2.3 GB for 0.54 GB of params at 135M) would stay resident for the
    whole run and, fragmented, not even be reusable by the step's temporaries (the 135M run
    held 8.2 GB with a 3.7 GB step). `ifp train` calls it before the first step, after a
    step that took new memory and at every window's end (train/loop.py); the steps' own
    buffers are then faulted in once more and reused from there on."""
    if not _glibc_has_tunables():  # glibc is what has malloc_trim; 2.35+ is all we test
        return
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
