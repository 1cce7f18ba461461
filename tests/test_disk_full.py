"""A checkpoint the disk cannot take stops the run with one line and keeps the previous one.

The real failure: `ifp train` runs in a subprocess until its first checkpoint is recorded, then
its file-size limit (RLIMIT_FSIZE, set from outside with prlimit) drops below one checkpoint, so
the kernel fails the next save's writes (EFBIG; CPython ignores SIGXFSZ, so the write returns an
error as on a full disk). The early check: a disk reporting less free space than the state's
size refuses the save before anything of it is written.
"""

import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from ifp_jax.config import CheckpointConfig
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train import checksums
from ifp_jax.train.run_errors import CheckpointWriteError
from tests.helpers import TINY_OVERRIDES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 256 << 10  # bytes: below one checkpoint's array file (~0.8 MB), above the log files


def test_a_save_the_disk_cannot_take_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.pop("IFP_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ifp_jax.cli", "train", "tiny_multiskill", "--workdir", workdir,
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
