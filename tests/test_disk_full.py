"""A checkpoint the disk cannot take stops the run with one line and keeps the previous one.

The real failure: `ifp train` runs in a subprocess until its first checkpoint is recorded, then
its file-size limit (RLIMIT_FSIZE, set from outside with prlimit) drops below one checkpoint, so
the kernel fails the next save's writes (EFBIG; CPython ignores SIGXFSZ, so the write returns an
error as on a full disk). The early check: a disk reporting less free space than the state's
size refuses the save before anything of it is written.
"""

import asyncio
import logging
import os
import resource
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import pytest

from ifp_jax.config import CheckpointConfig
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train import checksums, run_errors
from ifp_jax.train.run_errors import CheckpointWriteError
from tests.helpers import TINY_OVERRIDES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 256 << 10  # bytes: below one checkpoint's array file (~0.8 MB), above the log files


def test_a_save_the_disk_cannot_take_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.pop("IFP_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ifp_jax", "train", "tiny_multiskill", "--workdir", workdir,
         *TINY_OVERRIDES, "train.steps=100000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while not os.path.exists(checksums.record_path(os.path.join(workdir, "checksums"), 3, 0)):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint recorded"
            time.sleep(0.2)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 2, err[-3000:]
    # Orbax logs the failed writes of its threads too (one line each, no traceback); the save's
    # other failed writes print nothing (they were up to ~400 traceback lines, once splitting our
    # line in two); ours is one line.
    assert "Event loop is closed" not in err and "Traceback" not in err, err[-3000:]
    ours = [x for x in err.splitlines() if x.startswith("ifp: error: ")]
    assert len(ours) == 1 and ours[0].startswith("ifp: error: checkpoint step "), err[-3000:]
    last = ours[0]
    assert "File too large" in last and "newest intact checkpoint is step" in last, last
    failed = int(last.split("checkpoint step ")[1].split()[0])
    intact = int(last.split("newest intact checkpoint is step ")[1].split(",")[0])
    assert intact < failed
    assert f'File "{ROOT}/ifp_jax' not in err  # no traceback through our code
    # The previous checkpoint is whole (its checksums match) and is what a rerun restores.
    ck = ckpt_lib.Checkpointer(workdir, CheckpointConfig(async_save=False))
    try:
        assert ck.latest_step() == intact
        assert checksums.damaged_files(os.path.join(ck.directory, str(intact)),
                                       ck.checksum_dir, intact) == []
    finally:
        ck.close()
    print(f"save of step {failed} failed, step {intact} intact: {last}")


def test_a_disk_with_less_free_space_than_the_state_refuses_the_save_before_writing(
        tmp_path, monkeypatch):
    state = {"w": jnp.ones((256, 256), jnp.float32)}  # 256 KiB
    ck = ckpt_lib.Checkpointer(str(tmp_path), CheckpointConfig(async_save=True, keep=3))
    ck.save(1, state, {"position": 1})
    ck.wait()
    real = ckpt_lib.shutil.disk_usage
    monkeypatch.setattr(ckpt_lib.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=100_000))
    with pytest.raises(CheckpointWriteError,
                       match=r"checkpoint step 2 could not be written .*0\.0001 GB free, the "
                             r"state needs 0\.000262 GB; nothing of it was written.*newest "
                             r"intact checkpoint is step 1"):
        ck.save(2, state, {"position": 2})
    ck.close()
    assert sorted(os.listdir(os.path.join(tmp_path, "checkpoints"))) == ["1"]
    ck = ckpt_lib.Checkpointer(str(tmp_path), CheckpointConfig())
    step, restored, data = ck.restore_latest(jax.eval_shape(lambda: state))
    ck.close()
    assert step == 1 and data == {"position": 1}
    assert bool(jnp.all(restored["w"] == 1))


def test_a_failed_saves_stragglers_print_nothing_and_other_errors_still_do(monkeypatch):
    """The two kinds of noise a failed save leaves, each filtered only where it is that noise."""
    monkeypatch.delenv("IFP_DEBUG", raising=False)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    run_errors.quiet_orbax_tracebacks()  # wraps the hook installed above

    def unraisable(error: BaseException, tb):
        return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=tb,
                                     err_msg=None, object=None)

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    # Called from tensorstore's C++ thread, the traceback starts at call_soon_threadsafe.
    sys.unraisablehook(unraisable(closed, closed.__traceback__.tb_next))
    assert seen == []
    other = unraisable(ValueError("a real problem"), None)
    sys.unraisablehook(other)
    assert seen == [other]

    try:
        exec(compile("raise ValueError('write failed')", "/site-packages/orbax/fake.py", "exec"))
    except ValueError:
        orbax_failure = sys.exc_info()
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                               "Task exception was never retrieved", None, orbax_failure)
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(run_errors, "_save_failed", False)  # the flag is per process
    assert all(f.filter(record) for f in asyncio_log.filters)  # before any save failed: kept
    monkeypatch.setattr(run_errors, "_save_failed", True)
    assert not all(f.filter(record) for f in asyncio_log.filters)  # after: dropped
    mine = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "elsewhere", None,
                             (ValueError, ValueError("x"), None))
    assert all(f.filter(mine) for f in asyncio_log.filters)  # not raised in orbax: kept
