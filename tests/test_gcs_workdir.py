"""`ifp` with its workdir, data and exports in a bucket, against a real GCS API (fake-gcs-server
on 127.0.0.1; every client reaches it through STORAGE_EMULATOR_HOST)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import TINY_OVERRIDES
from ifp_jax.storage import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SAVE_EVERY = 12, 3
TRAIN = ["tiny_multiskill", *TINY_OVERRIDES, f"train.steps={STEPS}",
         f"checkpoint.every_steps={SAVE_EVERY}", "checkpoint.keep=5", "mesh.data=1"]
PROMPT = "reverse abc"


def _env(emulator, **extra) -> dict:
    env = dict(emulator.env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)
    env.pop("IFP_DEBUG", None)
    return env


def _ifp(emulator, *args, cwd, check=True, **extra) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ifp_jax", *args], cwd=cwd, text=True,
                          capture_output=True, env=_env(emulator, **extra), timeout=900)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _losses(metrics_text: str) -> dict[int, float]:
    """step -> loss; the last record of a step wins (a resumed run logs its steps again)."""
    out = {}
    for line in metrics_text.splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def _train_killed_once_after_a_checkpoint(emulator, workdir: str, cwd) -> None:
    """Starts `ifp train`, SIGKILLs it once step 6's checkpoint is committed in the bucket."""
    proc = subprocess.Popen([sys.executable, "-m", "ifp_jax", "train", *TRAIN, "--workdir",
                             workdir], cwd=cwd, text=True,
                            env=_env(emulator, JAX_ENABLE_COMPILATION_CACHE="true"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marker = f"{workdir}/checkpoints/{2 * SAVE_EVERY}/commit_success.txt"
    deadline = time.time() + 600
    while not paths.exists(marker):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint in the bucket within 10 minutes"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def runs(gcs_emulator, tmp_path_factory):
    """The same run twice: uninterrupted on local disk, and in a bucket killed once (SIGKILL
    after a checkpoint) then rerun to the end. Each exported to where its workdir is."""
    tmp = tmp_path_factory.mktemp("gcs_runs")
    cwd = tmp / "cwd"
    cwd.mkdir()
    bucket = gcs_emulator.new_bucket()
    local, remote = str(tmp / "local"), f"{bucket}/runs/r1"
    _ifp(gcs_emulator, "train", *TRAIN, "--workdir", local, cwd=cwd)
    _train_killed_once_after_a_checkpoint(gcs_emulator, remote, cwd)
    # The bucket runs keep JAX's compilation cache in the workdir (the suite turns it off).
    resumed = _ifp(gcs_emulator, "train", *TRAIN, "--workdir", remote, cwd=cwd,
                   JAX_ENABLE_COMPILATION_CACHE="true")
    exports = {}
    for name, workdir, out in (("local", local, str(tmp / "export")),
                               ("remote", remote, f"{bucket}/exports/e1")):
        _ifp(gcs_emulator, "export", "--workdir", workdir, "--out", out, "--prompt", PROMPT,
             "--format", "orbax", cwd=cwd)
        exports[name] = out
    return dict(local=local, remote=remote, bucket=bucket, resumed=resumed, exports=exports,
                cwd=cwd)


def test_a_killed_run_in_a_bucket_resumes_to_the_uninterrupted_losses(runs):
    assert f"resumed {runs['remote']} at step" in runs["resumed"].stdout
    local = _losses(open(os.path.join(runs["local"], "metrics.jsonl")).read())
    remote = _losses(paths.read_text(f"{runs['remote']}/metrics.jsonl"))
    assert sorted(local) == sorted(remote) == list(range(1, STEPS + 1))
    for step in local:
        assert remote[step] == pytest.approx(local[step], rel=1e-5, abs=1e-6), step


def test_the_bucket_holds_the_whole_run_and_nothing_was_written_locally(runs):
    names = set(paths.listdir(runs["remote"]))
    assert {"config.json", "metrics.jsonl", "checkpoints", "checksums", "tb"} <= names
    assert ".lock" not in names  # released at the end
    assert paths.listdir(f"{runs['remote']}/tb"), "no TensorBoard events in the bucket"
    steps = sorted(int(s) for s in paths.listdir(f"{runs['remote']}/checkpoints") if s.isdigit())
    assert steps[-1] == STEPS
    assert os.listdir(runs["cwd"]) == []  # no ./gs:/... directory
    assert any(n.startswith("jit_step") for n in paths.listdir(f"{runs['remote']}/xla_cache"))


def test_generate_from_an_export_in_the_bucket_gives_the_local_tokens(runs, gcs_emulator):
    assert paths.isfile(f"{runs['exports']['remote']}/export.json")
    texts = {}
    for name, model in runs["exports"].items():
        done = _ifp(gcs_emulator, "generate", "--model", model, "--prompt", PROMPT,
                    "--max-new-tokens", "12", cwd=runs["cwd"])
        texts[name] = done.stdout  # greedy; the byte vocabulary maps text to tokens one-to-one
    assert texts["remote"] == texts["local"] and texts["local"].strip()
    done = _ifp(gcs_emulator, "generate", "--workdir", runs["remote"], "--prompt", PROMPT,
                "--max-new-tokens", "4", cwd=runs["cwd"])
    assert done.stdout.strip()


def test_eval_of_a_run_in_the_bucket_writes_its_results_there(runs, gcs_emulator):
    done = _ifp(gcs_emulator, "eval", "--workdir", runs["remote"], "--mask", "per-input",
                cwd=runs["cwd"])
    result = json.loads(paths.read_text(f"{runs['remote']}/eval_per-input_lambda.json"))
    assert result["step"] == STEPS and result["per_task"], done.stdout[-1000:]
    assert os.listdir(runs["cwd"]) == []


def test_prepared_data_in_a_bucket_gives_the_local_batches(bucket, tmp_path):
    from ifp_jax.config import DataConfig, replace
    from ifp_jax.data import pipeline
    from ifp_jax.data.prepare import prepare
    data = DataConfig(mixture="ifp_facts", seq_len=20, global_batch_size=16, seed=3)
    local, remote = str(tmp_path / "prepared"), f"{bucket}/prepared"
    for out in (local, remote):
        assert prepare(data, 24, out, examples_per_file=1500, log=lambda m: None) is not None
    assert paths.isfile(f"{remote}/manifest.json")
    a = pipeline.make_train_batches(replace(data, prepared_dir=local), 24)
    b = pipeline.make_train_batches(replace(data, prepared_dir=remote), 24)
    for index in (0, 7):
        x, y = a.batch_at(index), b.batch_at(index)
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("case", ["unreachable", "missing bucket"])
def test_an_unusable_bucket_is_one_line_in_seconds_and_nothing_is_written(
        case, gcs_emulator, tmp_path):
    extra = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
             "TENSORSTORE_GCS_HTTP_URL": "http://127.0.0.1:9"} if case == "unreachable" else {}
    start = time.time()
    done = _ifp(gcs_emulator, "train", *TRAIN, "--workdir", "gs://no-such-bucket-here/run",
                cwd=tmp_path, check=False, **extra)
    elapsed = time.time() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    want = "cannot reach Cloud Storage" if case == "unreachable" else "does not exist"
    assert lines[0].startswith("ifp: error: ") and want in lines[0], lines[0]
    assert elapsed < 60, elapsed  # process start-up included; the probe itself has no retries
    assert os.listdir(tmp_path) == []
