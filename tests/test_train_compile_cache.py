"""`ifp train` keeps its compiled step in JAX's persistent cache (train.compile_cache_dir): a
restart, or a new run of the same shapes, loads it instead of compiling again."""

import os
import subprocess
import sys

from tests.helpers import TINY_OVERRIDES

# One step, one held-out example per task: the runs are start-up, compile and little else.
SHORT = TINY_OVERRIDES + ["train.steps=1", "data.eval_examples_per_task=1"]


def _train(workdir, *overrides, env):
    return subprocess.Popen([sys.executable, "-m", "ifp_jax", "train", "tiny_multiskill",
                             "--workdir", str(workdir), *SHORT, *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(p) -> str:
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    return out


def _step_seconds(out: str) -> float:
    line = next(x for x in out.splitlines() if "train step compiled in" in x)
    return float(line.rsplit(" ", 1)[1].rstrip("s"))


# What `ifp train` does with train.compile_cache_dir before its first compile, then a compile
# that JAX would cache (min compile time 0): a cheap stand-in for a third training run.
CONFIG_THEN_COMPILE = """
import sys, jax, jax.numpy as jnp
from ifp_jax.commands.resolve import registered
from ifp_jax.commands.train import use_compile_cache
cfg = registered("tiny_multiskill", ["train.compile_cache_dir=" + sys.argv[1]])
use_compile_cache(cfg.train.compile_cache_dir, "unused-local-workdir")
jax.jit(lambda x: jnp.sin(x) @ x).lower(jnp.ones((64, 64))).compile()
"""


def _config_then_compile(path: str, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CONFIG_THEN_COMPILE, path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_second_run_loads_the_step_from_the_cache_and_off_writes_nothing(tmp_path):
    cache, elsewhere, control = tmp_path / "cache", tmp_path / "jax_own", tmp_path / "control"
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_ENABLE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    # The cache switched off ("" in the config): nothing lands even where JAX's own setting
    # would put it; the same compile with the cache on does write (the check is not vacuous).
    jax_own = {**env, "JAX_COMPILATION_CACHE_DIR": str(elsewhere),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    off = _config_then_compile("", jax_own)
    on = _config_then_compile(str(control), jax_own)
    first = _finish(_train(tmp_path / "run1", f"train.compile_cache_dir={cache}", env=env))
    entries = sorted(os.listdir(cache))
    step = [e for e in entries if e.startswith("jit_step-")]
    assert len(step) == 1, entries  # the train step, cached on the first run
    second = _finish(_train(tmp_path / "run2", f"train.compile_cache_dir={cache}", env=env))
    added = set(os.listdir(cache)) - set(entries)
    # The step was a hit. (A small jit just under the 0.3 s floor on the first run may cross it
    # on a busier second run and be added: JAX's floor is on time, so that is not checked.)
    assert not [e for e in added if e.startswith("jit_step-")], added
    print(f"train step: compiled in {_step_seconds(first)}s, loaded in {_step_seconds(second)}s")
    _finish(off), _finish(on)
    assert not elsewhere.exists() or not os.listdir(elsewhere)
    assert os.listdir(control)
