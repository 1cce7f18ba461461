"""A preemption notice (SIGTERM) reaching one process of a multi-process job: every process saves
the same step and exits 75; the rerun resumes there and continues exactly as an uninterrupted
run (2 local processes, gloo CPU collectives over 127.0.0.1)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import TINY_OVERRIDES, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_PREEMPTED = 75
EXTRA = 4  # steps the rerun trains past the preemption step


def _launch(workdir: str, steps: int, logs: list) -> list[subprocess.Popen]:
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("IFP_DEBUG", None)
    return [subprocess.Popen(
        [sys.executable, "-m", "ifp_jax", "train", "tiny_multiskill", "--workdir", workdir,
         *TINY_OVERRIDES, f"train.steps={steps}", "checkpoint.every_steps=1000",
         "mesh.data=2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(i)], cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT,
        text=True) for i in range(2)]


def _wait(procs, logs, timeout=600) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _steps(workdir: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_sigterm_to_one_process_saves_one_agreed_step_and_the_rerun_resumes_exactly(tmp_path):
    workdir = str(tmp_path / "run")
    logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]
    procs = _launch(workdir, 2000, logs)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        assert all(p.poll() is None for p in procs), open(tmp_path / "p0.log").read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    codes = _wait(procs, logs)
    out = [open(tmp_path / f"p{i}.log").read() for i in range(2)]
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], (codes, out[0][-2000:], out[1][-2000:])
    saved = re.search(r"checkpoint saved at step (\d+) by all 2 process", out[0])
    assert saved, out[0][-2000:]
    step = int(saved.group(1))
    assert _steps(workdir) == [step] and 3 <= step < 2000
    for process in (0, 1):  # both wrote their shards of that one step, and recorded them
        assert os.path.isdir(os.path.join(workdir, "checkpoints", str(step), "state",
                                          f"ocdbt.process_{process}"))
        assert os.path.exists(os.path.join(workdir, "checksums", f"{step}.process_{process}.json"))

    logs = [open(tmp_path / f"r{i}.log", "w+") for i in range(2)]
    assert _wait(_launch(workdir, step + EXTRA, logs), logs) == [0, 0]
    assert f"resumed {workdir} at step {step}" in open(tmp_path / "r0.log").read()
    reference = str(tmp_path / "uninterrupted")
    logs = [open(tmp_path / f"u{i}.log", "w+") for i in range(2)]
    assert _wait(_launch(reference, step + EXTRA, logs), logs) == [0, 0]
    resumed, whole = _losses(workdir), _losses(reference)
    for s in range(1, step + EXTRA + 1):
        assert resumed[s] == pytest.approx(whole[s], rel=1e-6, abs=1e-7), s
