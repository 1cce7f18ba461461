"""`ifp train` as several processes on this machine (gloo CPU collectives over 127.0.0.1).

CI (not slow): 2 processes x 2 virtual devices (mesh fsdp 4: each process holds half of every
sharded parameter) train 5 steps, saving at 3 and 5; the step-3 checkpoint, copied to a fresh
workdir, is restored by 1 process x 4 devices on another mesh (data 2 x tensor 2) that trains
steps 4-5. The train loop's restore onto a third mesh (this process, 8 devices) equals the stored
arrays bitwise (every leaf of params and optimizer state); the resumed steps' losses and final
params equal the uninterrupted 2-process run's (within the reduction-order bounds of
tests/test_sharding.py).

Slow: 2 processes x 4 virtual devices train and save; 1 process x 8 devices with another mesh
restores and continues; every step's loss equals a 1-process, 1-device run of the same global
batches (rtol 1e-4: only the reduction order differs). The learning rate is constant after
warm-up (optimizer.final_lr_fraction=1), since the cosine schedule depends on train.steps, which
the resumed run raises. Killing one process ends the other within the
heartbeat bound. Coordinator and process-count mistakes fail with one line, in bounded time.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ifp_jax import experiments
from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, MeshConfig, apply_overrides, load_workdir_config, replace
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, state_layout
from ifp_jax.train.loop import train
from ifp_jax.train.workdir_lock import WorkdirLock
from tests.chaos import final_params
from tests.helpers import TINY_OVERRIDES as TINY
from tests.helpers import free_port as _free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("IFP_DEBUG", None)
    return env


def _ifp(*args: str, devices: int, log=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ifp_jax", *args], cwd=ROOT,
                            env=_env(devices), stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _train_args(workdir: str, steps: int, mesh: str, extra=()) -> list[str]:
    data, fsdp, tensor = mesh.split(",")
    return ["train", "tiny_multiskill", "--workdir", workdir, *TINY, f"train.steps={steps}",
            "pruning.temperature_anneal_steps=9",
            f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", *extra]


def _run_processes(workdir: str, steps: int, mesh: str, n: int, devices: int, tmp_path,
                   timeout: float = 600, extra=()) -> str:
    port = _free_port()
    logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(n)]
    procs = [_ifp(*_train_args(workdir, steps, mesh, extra),
                  *([] if n == 1 else ["--coordinator", f"127.0.0.1:{port}",
                                       "--num-processes", str(n), "--process-id", str(i)]),
                  devices=devices, log=logs[i]) for i in range(n)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    outs = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        outs.append(log.read())
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{outs[-1][-3000:]}"
    return outs[0]


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _stored_state(workdir: str, step: int) -> dict:
    """Every leaf of checkpoint `step`'s train state as stored (numpy, no mesh), by path."""
    import logging

    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    logging.getLogger("absl").setLevel(logging.ERROR)  # "no step metadata" for a bare item
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path).item_metadata.tree
        args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        tree = ckptr.restore(path, restore_args=args)
    return {_path(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _path(keys) -> str:
    """'opt_state/1/inner_states/...' for a tree path of dict keys, attributes or indices."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in keys)


# Bounds as in tests/test_sharding.py (float32, only the reduction order differs between meshes):
# losses 1e-5 apart; params 0.1 x lr, since AdamW turns rounding-level gradient differences
# where |g| ~ its eps (1e-8) into update differences of up to lr.
LOSS_ATOL, PARAM_ATOL_LR = 1e-5, 0.1


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
def test_two_processes_save_one_process_on_another_mesh_restores_and_resumes(tmp_path):
    saved, resumed = str(tmp_path / "two_processes"), str(tmp_path / "resumed")
    # 2 processes x 2 devices, mesh fsdp 4 across both: steps 1..5, checkpoints at 3 and 5.
    _run_processes(saved, 5, "1,4,1", n=2, devices=2, tmp_path=tmp_path)
    assert sorted(os.listdir(os.path.join(saved, "checkpoints"))) == ["3", "5"]
    records = sorted(os.listdir(os.path.join(saved, "checksums")))
    assert records == ["3.process_0.json", "3.process_1.json", "5.process_0.json",
                       "5.process_1.json"], records  # both processes wrote their shards

    # The train loop's restore (Checkpointer.restore_latest into a state layout) of the step-3
    # checkpoint on a third mesh, in this process: every leaf equals the stored array bitwise.
    cfg = load_workdir_config(saved)
    cfg = replace(cfg, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
    mesh = shd.make_mesh(cfg.mesh)
    layout = state_layout(build_model(cfg), cfg, make_optimizer(cfg.optimizer, cfg.train.steps),
                          mesh)
    stored = _stored_state(saved, 3)
    shutil.copytree(saved, resumed, ignore=lambda d, names: [
        n for n in names if n in ("5", ".lock", "metrics.jsonl", "tb") or n.startswith("5.")])
    ck = ckpt_lib.Checkpointer(resumed, cfg.checkpoint)
    try:
        step, state, data_state = ck.restore_latest(layout.abstract)
    finally:
        ck.close()
    assert step == 3 and ck.skipped_steps == 0 and data_state
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    assert sorted(_path(k) for k, _ in flat) == sorted(stored) and len(stored) > 50
    for key, leaf in flat:
        assert leaf.sharding.mesh.shape == mesh.shape
        np.testing.assert_array_equal(np.asarray(leaf), stored[_path(key)], err_msg=_path(key))

    # 1 process x 4 devices, mesh data 2 x tensor 2, resumes the copy at step 3: steps 4, 5.
    out = _run_processes(resumed, 5, "2,1,2", n=1, devices=4, tmp_path=tmp_path)
    assert f"resumed {resumed} at step 3" in out, out[-3000:]
    uninterrupted, after = _losses(saved), _losses(resumed)
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5] and sorted(after) == [4, 5]
    # Step 4's loss checks the restored params; step 5's also the restored optimizer state.
    for s in (4, 5):
        assert abs(after[s] - uninterrupted[s]) < LOSS_ATOL, (s, after[s], uninterrupted[s])
    a, b = final_params(saved, 5), final_params(resumed, 5)
    assert a.keys() == b.keys()
    lr = max(cfg.optimizer.lr_llm, cfg.optimizer.lr_predictor)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=PARAM_ATOL_LR * lr, err_msg=key)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
def test_two_processes_initialise_scores_like_one(tmp_path):
    """pruning.init_scores=activation across 2 processes x 2 devices (each reads its own rows of
    the first batches, the sums are global) stores the selection scores one process computes."""
    extra = ("pruning.init_scores=activation", "pruning.init_scores_tokens=2048",
             "data.eval_examples_per_task=1")
    two = str(tmp_path / "two")
    out = _run_processes(two, 0, "1,4,1", n=2, devices=2, tmp_path=tmp_path, extra=extra)
    assert "selection scores initialised from the LLM's FFN activations" in out
    ref = str(tmp_path / "one")
    cfg = apply_overrides(experiments.get("tiny_multiskill"),
                          _train_args(ref, 0, "1,1,1", extra)[4:])
    one = jax.device_get(train(cfg, ref))
    stored = _stored_state(two, 0)
    for key, want in (("params/static_scores", one.params["static_scores"]),
                      ("params/predictor/head_out/bias",
                       one.params["predictor"]["head_out"]["bias"])):
        np.testing.assert_allclose(stored[key], want, rtol=1e-4, atol=1e-4, err_msg=key)
    assert np.std(stored["params/static_scores"]) > 1.0  # set (scale 3), not the 0.01 init


@pytest.mark.slow  # ~4 min on 2 cores (three trainings, two of them on 8 virtual devices)
@pytest.mark.skipif(len(__import__("jax").devices()) < 8, reason="needs 8 (virtual) devices")
def test_two_processes_save_one_process_other_mesh_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    # 2 processes x 4 devices, mesh data 4 x fsdp 2: steps 1..6, checkpoints at 3 and 6.
    _run_processes(workdir, 6, "4,2,1", n=2, devices=4, tmp_path=tmp_path)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    # 1 process x 8 devices, mesh data 2 x fsdp 2 x tensor 2: restores step 6, runs 7..9.
    _run_processes(workdir, 9, "2,2,2", n=1, devices=8, tmp_path=tmp_path)
    resumed = _losses(workdir)
    # Reference: this process, one device, the same global batches.
    ref_dir = str(tmp_path / "ref")
    cfg = apply_overrides(experiments.get("tiny_multiskill"),
                          _train_args(ref_dir, 9, "1,1,1")[4:])
    train(cfg, ref_dir)
    ref = _losses(ref_dir)
    assert sorted(resumed) == list(range(1, 10)) and sorted(ref) == list(range(1, 10))
    np.testing.assert_allclose([resumed[s] for s in range(1, 10)], [ref[s] for s in range(1, 10)],
                               rtol=1e-4)


def test_killing_one_process_ends_the_other(tmp_path):
    port, heartbeat = _free_port(), 10
    workdir = str(tmp_path / "run")
    logs = [open(tmp_path / f"k{i}.log", "w+") for i in range(2)]
    procs = [_ifp(*_train_args(workdir, 100000, "4,1,1"), "--coordinator", f"127.0.0.1:{port}",
                  "--num-processes", "2", "--process-id", str(i), "--heartbeat-timeout",
                  str(heartbeat), devices=2, log=logs[i], start_new_session=True)
             for i in range(2)]
    try:
        deadline = time.time() + 400
        while not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            assert time.time() < deadline and procs[0].poll() is None, "training never started"
            time.sleep(1)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed_at = time.time()
        procs[0].wait(timeout=heartbeat + 90)
        waited = time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert procs[0].returncode != 0
    assert waited < heartbeat + 90, waited
    print(f"survivor exited {waited:.1f}s after its peer was killed (heartbeat {heartbeat}s)")


def test_unreachable_coordinator_fails_fast_with_one_line(tmp_path):
    t0 = time.time()
    p = _ifp(*_train_args(str(tmp_path / "run"), 5, "-1,1,1"), "--coordinator",
             f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "1",
             "--init-timeout", "5", devices=1)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ifp: error: coordinator 127.0.0.1:") and "did not answer within 5s" in last
    assert "--coordinator" in last
    assert time.time() - t0 < 90
    assert not os.path.exists(tmp_path / "run")  # nothing written


def test_process_count_mismatch_is_refused_on_both(tmp_path):
    port = _free_port()
    procs = [_ifp(*_train_args(str(tmp_path / "run"), 5, "-1,1,1"), "--coordinator",
                  f"127.0.0.1:{port}", "--num-processes", n, "--process-id", i,
                  "--init-timeout", "60", devices=1) for n, i in (("2", "0"), ("3", "1"))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 2, out
        assert "give every process the same --num-processes" in out.strip().splitlines()[-1], out


@pytest.mark.parametrize("args, message", [
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1"],
     "--process-id 2 must be in 0..1"),
    (["--num-processes", "2"], "go together"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
])
def test_bad_process_flags_are_one_line_errors(tmp_path, args, message):
    p = _ifp(*_train_args(str(tmp_path / "run"), 5, "-1,1,1"), *args, devices=1)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and message in out.strip().splitlines()[-1], out


def test_second_job_on_a_workdir_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    holder = WorkdirLock(workdir)
    holder.acquire()  # as a running job would
    try:
        cfg = apply_overrides(experiments.get("tiny_multiskill"),
                              _train_args(workdir, 2, "1,1,1")[4:])
        with pytest.raises(ConfigError, match="in use by another `ifp train` .pid"):
            train(cfg, workdir)
        assert os.listdir(workdir) == [".lock"]  # nothing else was written
    finally:
        holder.release()
