"""`ifp` starts fast and quietly: the commands that touch no data (`--help`, `list`, `config`)
import neither TensorFlow/SeqIO nor JAX, and no command prints library noise (TensorFlow's CUDA
probing and absl banners, libtpu's TPU-host warnings on a host without a TPU).

The subprocesses run with the environment of a user's shell: without conftest's JAX_PLATFORMS,
TF_CPP_MIN_LOG_LEVEL and XLA_FLAGS.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from ifp_jax import platform
from ifp_jax.commands import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tensorflow", "seqio", "jax", "jaxlib", "flax", "grain", "orbax")

# Runs cli.main(argv) and records its exit code and which heavy modules it imported.
_PROBE = r"""
import json, sys
from ifp_jax.commands import main as cli
try:
    rc = cli.main(sys.argv[2:])
except SystemExit as e:  # argparse: --help
    rc = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "imported": sorted(m for m in %r if m in sys.modules)}, f)
""" % (HEAVY,)


def _user_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS",
                        "ALLOW_MULTIPLE_LIBTPU_LOAD")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _probe(argv, tmp_path):
    out = tmp_path / "probe.json"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _PROBE, str(out), *argv], cwd=ROOT,
                       env=_user_env(), capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    assert out.exists(), p.stderr
    return p, json.loads(out.read_text()), wall


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["list"],
    ["config", "tiny_multiskill"],
    ["config", "paper_9b_to_3b", "--hardware", "v5p", "train.steps=3"],
], ids=lambda a: " ".join(a))
def test_commands_without_data_import_no_tensorflow_nor_jax_and_print_nothing_on_stderr(
        argv, tmp_path):
    p, probe, wall = _probe(argv, tmp_path)
    assert probe["rc"] == 0, p.stderr
    assert probe["imported"] == [], f"`ifp {' '.join(argv)}` imported {probe['imported']}"
    assert p.stderr == ""
    assert p.stdout
    assert wall < 10, f"{wall:.1f}s"  # a sanity bound only: the import check is the test


def test_config_error_is_one_line_without_tensorflow(tmp_path):
    p, probe, _ = _probe(["config", "tiny_multiskil"], tmp_path)
    assert probe["rc"] == 2
    assert probe["imported"] == []
    assert p.stderr == "ifp: error: unknown experiment 'tiny_multiskil': did you mean " \
                       "'tiny_multiskill'?\n"


def test_module_entry_point_lists_experiments_quietly():
    p = subprocess.run([sys.executable, "-m", "ifp_jax", "list"], cwd=ROOT, env=_user_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "tiny_multiskill" in p.stdout.split()
    assert p.stderr == ""


# --- JAX on a host with libtpu but no TPU ---------------------------------------------------

@pytest.fixture
def no_tpu_host(monkeypatch):
    """libtpu installed, no TPU, no other JAX plugin, JAX_PLATFORMS unset."""
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("JAX_FORCE_TPU_INIT", raising=False)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    monkeypatch.setattr(platform, "installed", lambda m: m == "libtpu")
    monkeypatch.setattr(platform, "tpu_may_be_present", lambda: False)
    monkeypatch.setattr(platform, "other_jax_plugins", lambda: False)
    return monkeypatch


def test_jax_is_pinned_to_cpu_where_libtpu_has_no_tpu(no_tpu_host):
    platform.pin_cpu_without_tpu()
    assert os.environ["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("case", ["tpu_present", "user_set", "force_tpu", "no_libtpu",
                                  "gpu_plugin"])
def test_jax_platforms_are_left_alone_otherwise(no_tpu_host, case):
    if case == "tpu_present":  # a TPU VM: `ifp train` must use the TPU
        no_tpu_host.setattr(platform, "tpu_may_be_present", lambda: True)
    elif case == "user_set":
        no_tpu_host.setenv("JAX_PLATFORMS", "")
    elif case == "force_tpu":
        no_tpu_host.setenv("JAX_FORCE_TPU_INIT", "1")
    elif case == "no_libtpu":  # JAX tries no TPU, so prints nothing: keep its default
        no_tpu_host.setattr(platform, "installed", lambda m: False)
    elif case == "gpu_plugin":  # jax[cuda12]: the GPU must stay reachable
        no_tpu_host.setattr(platform, "other_jax_plugins", lambda: True)
    before = os.environ.get("JAX_PLATFORMS")
    platform.pin_cpu_without_tpu()
    assert os.environ.get("JAX_PLATFORMS") == before


def test_commands_without_jax_do_not_probe_for_a_tpu(monkeypatch, capsys):
    monkeypatch.setattr(platform, "pin_cpu_without_tpu", lambda: pytest.fail("probed"))
    assert cli.main(["list"]) == 0
    assert cli.main(["config", "tiny_multiskill"]) == 0


# --- TensorFlow's import ----------------------------------------------------------------------

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1795707601.072068   14990 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n",
    "E0000 00:00:1795708346.452699   21194 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    "W1126 15:04:05.123456   77 some_file.cc:12] a warning\n",
]


def test_tensorflow_import_drops_only_its_cpp_log_lines_and_restores_stderr(monkeypatch, capfd):
    from ifp_jax import tf_import
    kept = "a Python warning during the import\nF0000 00:00:1.5 3 x.cc:1] fatal\n"

    def noisy(tf):
        os.write(2, "".join(NOISE[:2] + [kept] + NOISE[2:]).encode())
    monkeypatch.setattr(tf_import, "_hide_gpus", noisy)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # as JAX sets it when imported first
    capfd.readouterr()
    seqio, tf = tf_import._import_quietly()
    assert seqio is tf_import.seqio and tf is tf_import.tf
    os.write(2, b"after\n")  # fd 2 is the test's stderr again
    assert capfd.readouterr().err == kept + "after\n"


def test_tensorflow_import_failure_shows_everything_and_raises(monkeypatch, capfd):
    from ifp_jax import tf_import

    def broken(tf):
        os.write(2, NOISE[1].encode())
        raise ImportError("libsomething.so: cannot open shared object file")
    monkeypatch.setattr(tf_import, "_hide_gpus", broken)
    capfd.readouterr()
    with pytest.raises(ImportError, match="libsomething.so"):
        tf_import._import_quietly()
    os.write(2, b"after\n")
    assert capfd.readouterr().err == NOISE[1] + "after\n"


@pytest.mark.parametrize("line", NOISE)
def test_noise_lines_are_recognised(line):
    from ifp_jax.tf_import import is_import_noise
    assert is_import_noise(line)


@pytest.mark.parametrize("line", ["Traceback (most recent call last):\n",
                                  "F0000 00:00:1795708346.452699 1 x.cc:1] fatal\n",
                                  "ImportError: libcudart.so.12: cannot open shared object\n"])
def test_other_lines_are_kept(line):
    from ifp_jax.tf_import import is_import_noise
    assert not is_import_noise(line)


# --- a command that reads data ----------------------------------------------------------------

@pytest.mark.slow
def test_train_of_the_tiny_experiment_prints_no_library_noise(tmp_path):
    """`ifp train` imports JAX, TensorFlow and SeqIO: stderr stays empty (no CUDA, absl or libtpu
    lines); progress goes to stdout."""
    env = _user_env()
    if platform.tpu_may_be_present():  # a TPU VM: this test is about hosts without one
        env["JAX_PLATFORMS"] = "cpu"
    p = subprocess.run(
        [sys.executable, "-m", "ifp_jax", "train", "tiny_multiskill",
         "--workdir", str(tmp_path / "run"), "train.steps=2", "train.log_every=1",
         "checkpoint.every_steps=2", "data.global_batch_size=8",
         "data.eval_examples_per_task=2", "model.n_layers=1", "predictor.backbone.n_layers=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 2/2" in p.stdout
    assert p.stderr == ""
