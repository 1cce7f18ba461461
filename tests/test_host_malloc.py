"""`ifp` re-executes itself with glibc.malloc.hugetlb=1 (ifp_jax/host_malloc.py): the tunable is
added to the user's, the same command runs once more with the same PID, and XLA:CPU's temporaries
then fault in huge pages, not 4 KiB ones."""

import os
import subprocess
import sys

import pytest

from ifp_jax import host_malloc

needs_thp = pytest.mark.skipif(not host_malloc.useful({}),
                               reason="no glibc >= 2.35 with transparent huge pages here")


def test_the_tunable_is_added_to_the_users_own():
    assert host_malloc.with_tunable({})["GLIBC_TUNABLES"] == host_malloc.TUNABLE
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"}
    env = host_malloc.with_tunable(mine)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + host_malloc.TUNABLE
    assert env["HOME"] == "/h" and mine["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def test_no_reexec_when_already_set_or_opted_out():
    assert not host_malloc.useful({"GLIBC_TUNABLES": host_malloc.TUNABLE})
    assert not host_malloc.useful({host_malloc.OPT_OUT: "0"})


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT)}
    return {**env, **extra}


@needs_thp
def test_reexec_runs_the_same_command_once_more_with_the_tunable():
    code = ("import os; from ifp_jax import host_malloc; "
            "print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), flush=True); "
            "host_malloc.reexec_with_hugepages(); print('work', os.getpid())")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                         text=True, check=True).stdout.split("\n")
    pid = out[0].split()[1]
    assert out[:3] == [f"start {pid} -", f"start {pid} {host_malloc.TUNABLE}", f"work {pid}"]


_FAULTS = """
import resource
import jax, jax.numpy as jnp
@jax.jit
def step(a):  # a new 64 MB output buffer per call, malloc'd like a step's temporaries
    return jnp.tanh(a @ a.T)
a = jnp.linspace(0, 1, 4096 * 64).reshape(4096, 64)
step(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step(a).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


@needs_thp
def test_xla_temporaries_fault_in_huge_pages_with_the_tunable():
    def faults(**env):
        return int(subprocess.run([sys.executable, "-c", _FAULTS],
                                  env=_clean_env(JAX_PLATFORMS="cpu", **env),
                                  capture_output=True, text=True, check=True).stdout.split()[-1])
    small_pages = faults()
    huge_pages = faults(GLIBC_TUNABLES=host_malloc.TUNABLE)
    assert small_pages > 10_000, small_pages  # 64 MB in 4 KiB pages: 16K
    assert huge_pages * 5 < small_pages, (huge_pages, small_pages)
    print(f"page faults per call: {small_pages} in 4 KiB pages, {huge_pages} with the tunable")
