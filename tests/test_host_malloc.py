"""`ifp` re-executes itself with glibc malloc tunables (ifp_jax/host_malloc.py): they are added to
the user's, the same command runs once more with the same PID, and XLA:CPU's temporaries then
fault in huge pages, not 4 KiB ones, and only once: later executions reuse them."""

import os
import subprocess
import sys

import pytest

from ifp_jax import host_malloc

needs_thp = pytest.mark.skipif(not (host_malloc.useful({})
                                    and host_malloc.HUGEPAGES in host_malloc.tunables()),
                               reason="no glibc >= 2.35 with transparent huge pages here")


def test_the_tunables_are_added_to_the_users_own_and_theirs_win():
    ours = ":".join(host_malloc.tunables())
    assert host_malloc.with_tunables({})["GLIBC_TUNABLES"] == ours
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"}
    env = host_malloc.with_tunables(mine)
    added = [t for t in host_malloc.tunables() if not t.startswith("glibc.malloc.arena_max=")]
    assert env["GLIBC_TUNABLES"] == ":".join(["glibc.malloc.arena_max=2", *added])
    assert env["HOME"] == "/h" and mine["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def test_no_reexec_when_all_set_or_opted_out():
    assert not host_malloc.useful({"GLIBC_TUNABLES": ":".join(host_malloc.tunables())})
    assert not host_malloc.useful({host_malloc.OPT_OUT: "0"})


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT)}
    return {**env, **extra}


@needs_thp
def test_reexec_runs_the_same_command_once_more_with_the_tunable():
    code = ("import os; from ifp_jax import host_malloc; "
            "print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), flush=True); "
            "host_malloc.reexec_with_tunables(); print('work', os.getpid())")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                         text=True, check=True).stdout.split("\n")
    pid = out[0].split()[1]
    ours = ":".join(host_malloc.tunables())
    assert out[:3] == [f"start {pid} -", f"start {pid} {ours}", f"work {pid}"]


_FAULTS = """
import resource
import jax, jax.numpy as jnp
@jax.jit
def step(a):  # a new 51 MB output buffer per call (under the mapping threshold), malloc'd like
    # a step's temporaries
    return jnp.tanh(a @ a.T)
def faults_per_call(a):
    # Warm: the heap grows until freed buffers are there for the next call. That can take a
    # dozen calls (other threads' small blocks land in freed big ones): growth was seen up to
    # the 16th call, 3 warm calls made the test fail ~1 run in 3.
    for _ in range(20):
        step(a).block_until_ready()
    windows = []
    for _ in range(5):  # the least of five windows: one-off faults (a new thread...) drop out
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            step(a).block_until_ready()
        windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
    return min(windows)
big = faults_per_call(jnp.linspace(0, 1, 3584 * 64).reshape(3584, 64))
small = faults_per_call(jnp.linspace(0, 1, 64 * 64).reshape(64, 64))  # dispatch's own faults
print(round(big - small))
"""


@needs_thp
def test_xla_temporaries_fault_in_huge_pages_and_are_then_reused():
    def faults(*tunables):
        return int(subprocess.run([sys.executable, "-c", _FAULTS],
                                  env=_clean_env(JAX_PLATFORMS="cpu",
                                                 GLIBC_TUNABLES=":".join(tunables)),
                                  capture_output=True, text=True, check=True).stdout.split()[-1])
    small_pages = faults()
    huge_pages = faults(host_malloc.HUGEPAGES)
    reused = faults(*host_malloc.REUSE)  # without huge pages: the freed buffer is taken again
    both = faults(*host_malloc.tunables())
    assert small_pages > 10_000, small_pages  # 51 MB in 4 KiB pages: 12.5K
    assert huge_pages * 5 < small_pages, (huge_pages, small_pages)
    assert reused * 20 < small_pages, (reused, small_pages)
    assert both * 5 < small_pages, (both, small_pages)
    print(f"page faults per call for the buffer: {small_pages} in 4 KiB pages, {huge_pages} in "
          f"huge pages, {reused} reusing 4 KiB pages, {both} reusing huge pages")


_RELEASE = """
import numpy as np
from ifp_jax import host_malloc
from ifp_jax.host_memory import rss_mib
import os
start = rss_mib([os.getpid()])
a = np.ones(48 << 18, np.float32)  # 48 MiB: from the heap, under the mapping threshold
a[:] = 2
del a
kept = rss_mib([os.getpid()])
host_malloc.release_free_memory()
released = rss_mib([os.getpid()])
b = np.ones(128 << 18, np.float32)  # 128 MiB: a mapping of its own
b[:] = 2
del b
print(kept, released, rss_mib([os.getpid()]) - start)
"""


@needs_thp
def test_buffers_under_the_threshold_are_kept_until_released_bigger_ones_go_when_freed():
    env = _clean_env(GLIBC_TUNABLES=":".join(host_malloc.tunables()))
    out = subprocess.run([sys.executable, "-c", _RELEASE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    kept, released, after_big = (float(x) for x in out)
    assert kept - released > 40, (kept, released)  # MiB: the 48 MiB went back to the kernel
    assert after_big < 20, after_big  # the 128 MiB buffer's mapping went back when freed
