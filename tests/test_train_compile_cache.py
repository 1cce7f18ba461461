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


def test_second_run_loads_the_step_from_the_cache_and_off_writes_nothing(tmp_path):
    cache, elsewhere = tmp_path / "cache", tmp_path / "jax_default"
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_ENABLE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    # The cache switched off: nothing lands even where JAX's own setting would put it.
    off = _train(tmp_path / "off", "train.compile_cache_dir=",
                 env={**env, "JAX_COMPILATION_CACHE_DIR": str(elsewhere)})
    first = _finish(_train(tmp_path / "run1", f"train.compile_cache_dir={cache}", env=env))
    entries = sorted(os.listdir(cache))
    step = [e for e in entries if e.startswith("jit_step-")]
    assert len(step) == 1, entries  # the train step, cached on the first run
    second = _finish(_train(tmp_path / "run2", f"train.compile_cache_dir={cache}", env=env))
    assert sorted(os.listdir(cache)) == entries  # every compile of the second run was a hit
    print(f"train step: compiled in {_step_seconds(first)}s, loaded in {_step_seconds(second)}s")
    _finish(off)
    assert not elsewhere.exists() or not os.listdir(elsewhere)
