"""tpu/*.sh: the gcloud commands their --dry-run prints, their argument errors, and the remote
shell snippets (launch / stop / logs / unpack / job status) run locally against a fake home
directory.

No gcloud and no network: a stub `gcloud` / `git` on PATH records any call, and dry-runs must
make none. run.sh's relaunch loop runs for real against a stub gcloud that simulates a queued
resource's state and runs the job snippets on a fake worker (`fake_cloud`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ["create", "setup", "launch", "logs", "collect", "teardown", "run"]
ALL_FILES = [TPU / f"{s}.sh" for s in SCRIPTS] + [TPU / "common.sh"]
ZONE = ["--zone", "us-east5-a"]


@pytest.fixture()
def stub_bin(tmp_path):
    """A PATH dir whose gcloud and git record their arguments (dry-runs must not call them)."""
    d = tmp_path / "stub_bin"
    d.mkdir()
    for tool in ("gcloud", "git"):
        f = d / tool
        f.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        f.chmod(0o755)
    return d


def run(script: str, *args: str, stub: Path | None = None, env: dict | None = None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("IFP_TPU_")}
    if stub is not None:
        e["PATH"] = f"{stub}{os.pathsep}{e['PATH']}"
    e.update(env or {})
    return subprocess.run([str(TPU / f"{script}.sh"), *args], capture_output=True, text=True,
                          env=e, timeout=30)


def dry(script: str, *args: str, stub: Path, env: dict | None = None) -> list[list[str]]:
    """Runs `script --dry-run args`; returns the printed commands, each split into words."""
    r = run(script, *args, "--dry-run", stub=stub, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), r.stdout
    assert not (stub.parent / "calls").exists(), "dry-run executed a command"
    return [shlex.split(line[2:]) for line in lines]


def line(words: list[str]) -> str:
    return " ".join(words)


def remote(cmd: list[str]) -> str:
    """The --command of a `gcloud compute tpus tpu-vm ssh` line."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], cmd
    return cmd[cmd.index("--command") + 1]


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_bash_syntax(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_executable_and_help(script):
    assert os.stat(TPU / f"{script}.sh").st_mode & stat.S_IXUSR
    r = run(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: tpu/{script}.sh"), r.stdout


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    r = subprocess.run(["shellcheck", "-x", *map(str, ALL_FILES)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- create / teardown


def test_create_queued_resource_by_default(stub_bin):
    cmds = dry("create", "my-tpu", *ZONE, "--accelerator-type", "v5p-128", stub=stub_bin)
    assert line(cmds[0]) == ("gcloud compute tpus queued-resources create my-tpu --zone us-east5-a "
                             "--node-id my-tpu --accelerator-type v5p-128 "
                             "--runtime-version v2-alpha-tpuv5")
    assert line(cmds[1]) == ("gcloud compute tpus queued-resources describe my-tpu "
                             "--zone us-east5-a --format=value(state.state)")
    assert len(cmds) == 2
    assert dry("create", "my-tpu", *ZONE, "--accelerator-type", "v5p-128", "--queued",
               stub=stub_bin) == cmds  # --queued: the default, still accepted


@pytest.mark.parametrize("direct", ["--direct", "--no-queued"])
def test_create_tpu_vm_direct(stub_bin, direct):
    cmds = dry("create", "my-tpu", *ZONE, "--accelerator-type", "v5p-128", direct, stub=stub_bin)
    assert line(cmds[0]) == ("gcloud compute tpus tpu-vm create my-tpu --zone us-east5-a "
                             "--accelerator-type v5p-128 --version v2-alpha-tpuv5")
    assert line(cmds[1]) == ("gcloud compute tpus tpu-vm describe my-tpu --zone us-east5-a "
                             "--format=value(state)")
    assert len(cmds) == 2


@pytest.mark.parametrize("given,accel,runtime", [
    ("v4-64", "v4-64", "tpu-ubuntu2204-base"),
    ("v5litepod-256", "v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5e-256", "v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v5p-8", "v2-alpha-tpuv5"),
    ("v6e-16", "v6e-16", "v2-alpha-tpuv6e"),
])
def test_create_runtime_defaults(stub_bin, given, accel, runtime):
    create = dry("create", "t1", *ZONE, "--accelerator-type", given, "--no-wait", stub=stub_bin)
    assert create == [["gcloud", "compute", "tpus", "queued-resources", "create", "t1", *ZONE,
                       "--node-id", "t1", "--accelerator-type", accel,
                       "--runtime-version", runtime]]


def test_create_options(stub_bin):
    (cmd, _) = dry("create", "t1", *ZONE, "--accelerator-type=v4-8", "--runtime", "my-rt",
                   "--project", "proj", "--preemptible", "--direct", stub=stub_bin)
    assert line(cmd) == ("gcloud compute tpus tpu-vm create t1 --zone us-east5-a --project proj "
                         "--accelerator-type v4-8 --version my-rt --preemptible")
    (cmd, _) = dry("create", "t1", *ZONE, "--accelerator-type=v4-8", "--spot", "--direct",
                   stub=stub_bin)
    assert cmd[-1] == "--spot" and cmd[3:5] == ["tpu-vm", "create"]


@pytest.mark.parametrize("flag", ["--spot", "--reserved"])
def test_create_queued_spot_or_reserved(stub_bin, flag):
    create, describe = dry("create", "my-tpu", *ZONE, "--accelerator-type", "v5e-256",
                           flag, "--qr-id", "my-qr", stub=stub_bin)
    assert line(create) == ("gcloud compute tpus queued-resources create my-qr --zone us-east5-a "
                            "--node-id my-tpu --accelerator-type v5litepod-256 "
                            f"--runtime-version v2-alpha-tpuv5-lite {flag}")
    assert line(describe) == ("gcloud compute tpus queued-resources describe my-qr "
                              "--zone us-east5-a --format=value(state.state)")


def test_zone_and_project_from_env(stub_bin):
    (cmd,) = dry("teardown", "my-tpu", stub=stub_bin,
                 env={"IFP_TPU_ZONE": "europe-west4-a", "IFP_TPU_PROJECT": "p1"})
    assert line(cmd) == ("gcloud compute tpus queued-resources delete my-tpu "
                         "--zone europe-west4-a --project p1 --force --quiet")


def test_teardown(stub_bin):
    (qr,) = dry("teardown", "my-tpu", *ZONE, stub=stub_bin)
    assert line(qr) == ("gcloud compute tpus queued-resources delete my-tpu --zone us-east5-a "
                        "--force --quiet")
    assert dry("teardown", "my-tpu", *ZONE, "--queued", stub=stub_bin) == [qr]
    (qr,) = dry("teardown", "my-tpu", *ZONE, "--qr-id", "q7", stub=stub_bin)
    assert qr[5] == "q7"
    for direct in ("--direct", "--no-queued"):
        (vm,) = dry("teardown", "my-tpu", *ZONE, direct, stub=stub_bin)
        assert line(vm) == "gcloud compute tpus tpu-vm delete my-tpu --zone us-east5-a --quiet"


def test_create_waits_until_ready(stub_bin, tmp_path):
    """Real mode against a stub gcloud: create, then describe until READY."""
    calls = tmp_path / "calls"
    (stub_bin / "gcloud").write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        f'[[ $* == *describe* ]] && {{ [[ $(grep -c describe {calls}) -ge 2 ]] && echo READY '
        f'|| echo CREATING; }}\nexit 0\n')
    r = run("create", "t1", *ZONE, "--accelerator-type", "v6e-8", "--direct", stub=stub_bin,
            env={"IFP_TPU_POLL_SECONDS": "0"})
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("compute tpus tpu-vm create t1") and len(lines) == 3
    assert "READY" in r.stderr


# ---------------------------------------------------------------- setup


def test_setup_default_tarball(stub_bin):
    cmds = dry("setup", "my-tpu", *ZONE, stub=stub_bin)
    archive, scp, unpack, venv = cmds
    assert archive[:4] == ["git", "-C", str(ROOT), "archive"] and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert line(scp) == (f"gcloud compute tpus tpu-vm scp {tarball} my-tpu:ifp_jax_src.tar.gz "
                         f"--zone us-east5-a --worker=all")
    assert "--worker=all" in unpack and "tar -xzf ~/ifp_jax_src.tar.gz -C ~/ifp_jax" in remote(unpack)
    assert "--worker=all" in venv
    assert "pip install -q -e '.[tpu]'" in remote(venv)
    assert "--python 3.11" in remote(venv)
    assert not any("gcsfuse" in remote(c) for c in cmds[2:])


def test_setup_git_url_and_bucket(stub_bin):
    cmds = dry("setup", "my-tpu", *ZONE, "--git-url", "https://example.com/ifp.git",
               "--git-ref", "v1", "--bucket", "gs://my-bucket", stub=stub_bin)
    assert all(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] for c in cmds)
    clone, _, mount = cmds
    assert "git clone -q https://example.com/ifp.git ~/ifp_jax" in remote(clone)
    assert "checkout -q v1" in remote(clone)
    assert "gcsfuse --implicit-dirs my-bucket /gcs/my-bucket" in remote(mount)


# ---------------------------------------------------------------- launch / logs / collect


def test_launch(stub_bin):
    (cmd,) = dry("launch", "my-tpu", "tiny_multiskill", "--workdir", "/gcs/bkt/run1",
                 "train.steps=10", *ZONE, stub=stub_bin)
    assert cmd[5:9] == ["my-tpu", *ZONE, "--worker=all"]
    rc = remote(cmd)
    assert "ifp train tiny_multiskill --workdir /gcs/bkt/run1 train.steps=10" in rc
    assert "setsid nohup" in rc and ">> ~/ifp_logs/run1.log 2>&1 < /dev/null &" in rc


def test_launch_profile_and_run_name(stub_bin):
    (cmd,) = dry("launch", "my-tpu", "tiny_multiskill", "train.steps=10", "--workdir",
                 "/gcs/bkt/run1", "--profile-steps", "10:15", "--run", "r7", *ZONE, stub=stub_bin)
    rc = remote(cmd)
    assert "ifp train tiny_multiskill --workdir /gcs/bkt/run1 --profile-steps 10:15 train.steps=10" in rc
    assert "~/ifp_logs/r7.log" in rc


def test_launch_stop(stub_bin):
    (cmd,) = dry("launch", "my-tpu", "--stop", *ZONE, stub=stub_bin)
    assert "--worker=all" in cmd and "kill -TERM" in remote(cmd)


def wrapper(cmd: list[str]) -> str:
    """The wrapper script launch.sh's snippet writes to ~/ifp_logs/RUN.sh (as one string)."""
    m = re.search(r"printf '%s\\n' (.*) > ~/ifp_logs/[^ ]+\.sh; ", remote(cmd))
    assert m, remote(cmd)
    return m.group(1)


def test_launch_gs_workdir_env_and_log_upload(stub_bin):
    (cmd,) = dry("launch", "my-tpu", "tiny_multiskill", "--workdir", "gs://bkt/run1/", *ZONE,
                 "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x", "--env", "EMPTY=", stub=stub_bin)
    lines = shlex.split(wrapper(cmd))
    assert "~/ifp_venv/bin/ifp train tiny_multiskill --workdir gs://bkt/run1 &" in lines
    assert "export XLA_FLAGS=--xla_dump_to=/tmp/x" in lines and "export EMPTY=''" in lines
    assert any('gs://bkt/run1/logs/"$(hostname)".log' in x for x in lines)
    assert "while sleep 60; do upload; done &" in lines
    assert "~/ifp_logs/run1.log" in remote(cmd)
    (cmd,) = dry("launch", "my-tpu", "x", "--workdir", "/gcs/bkt/r2", "--logs-to", "gs://other/l",
                 "--logs-every", "5", *ZONE, stub=stub_bin)
    assert 'gs://other/l/"$(hostname)".log' in wrapper(cmd) and "sleep 5;" in wrapper(cmd)
    (cmd,) = dry("launch", "my-tpu", "x", "--workdir", "/home/me/r3", *ZONE, stub=stub_bin)
    assert "gcloud storage" not in remote(cmd) and "~/ifp_logs/r3.exit" in remote(cmd)


def test_logs(stub_bin):
    (w0,) = dry("logs", "my-tpu", *ZONE, stub=stub_bin)
    assert "--worker=0" in w0 and remote(w0) == "tail -n 100 -F ~/ifp_logs/latest.log"
    (w3,) = dry("logs", "my-tpu", *ZONE, "--worker", "3", "--run", "run1", "--no-follow",
                stub=stub_bin)
    assert "--worker=3" in w3 and remote(w3) == "tail -n 100 ~/ifp_logs/run1.log"
    (everyone,) = dry("logs", "my-tpu", *ZONE, "--all", stub=stub_bin)
    assert "--worker=all" in everyone and "tail -n 100 -F" in remote(everyone)


def test_collect(stub_bin):
    mkdir, cp = dry("collect", "my-tpu", "--workdir", "/gcs/bkt/runs/run1", "--dest", "out",
                    stub=stub_bin)
    assert mkdir == ["mkdir", "-p", "out"]
    assert line(cp) == "gcloud storage cp -r gs://bkt/runs/run1 out/"
    _, cp = dry("collect", "--workdir", "gs://bkt/runs/run1/", stub=stub_bin)
    assert line(cp) == "gcloud storage cp -r gs://bkt/runs/run1 runs/"
    _, scp = dry("collect", "my-tpu", "--workdir", "/home/me/run1", *ZONE, stub=stub_bin)
    assert line(scp) == ("gcloud compute tpus tpu-vm scp --recurse my-tpu:/home/me/run1 runs/ "
                         "--zone us-east5-a --worker=0")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("script,args,needle", [
    ("create", ["my-tpu", "--accelerator-type", "v5p-128"], "--zone"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v9-8"], "accelerator type"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "tpu-big"], "accelerator type"),
    ("create", ["my-tpu", *ZONE], "--accelerator-type"),
    ("create", ["--accelerator-type", "v5p-8", *ZONE], "TPU name"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v5p-8", "--spot", "--preemptible",
                "--direct"], "--spot"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v5p-8", "--spot", "--reserved"], "pick one"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v5p-8", "--preemptible"], "--direct"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v5p-8", "--reserved", "--direct"],
     "--reserved"),
    ("create", ["my-tpu", *ZONE, "--accelerator-type", "v5p-8", "--queued", "--direct"], "pick one"),
    ("teardown", ["my-tpu", *ZONE, "--queued", "--no-queued"], "pick one"),
    ("setup", ["my-tpu"], "--zone"),
    ("setup", ["my-tpu", *ZONE, "--bucket", "Bad_Bucket!"], "bucket"),
    ("launch", ["my-tpu", "tiny_multiskill", *ZONE], "--workdir"),
    ("launch", ["my-tpu", "tiny_multiskill", "--workdir", "run1", *ZONE], "absolute"),
    ("launch", ["my-tpu", "--workdir", "/gcs/bkt/r", *ZONE], "EXPERIMENT"),
    ("launch", ["my-tpu", "x", "--workdir", "/gcs/bkt/r", "--profile-steps", "5", *ZONE], "A:B"),
    ("launch", ["my-tpu", "x", "--workdir", "/gcs/bkt/r", "notanoverride", *ZONE], "section.key=value"),
    ("launch", ["my-tpu", "x", "--workdir", "gs://bkt", *ZONE], "gs://BUCKET/RUN"),
    ("launch", ["my-tpu", "x", "--workdir", "gs://Bad_Bucket/r", *ZONE], "gs://BUCKET/RUN"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--env", "NOVALUE", *ZONE], "--env KEY=VALUE"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--env", "1X=a", *ZONE], "--env KEY=VALUE"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--env", "A=1\n2", *ZONE], "one line"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--env", *ZONE], "--env needs a value"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--logs-to", "/tmp/l", *ZONE], "--logs-to"),
    ("launch", ["my-tpu", "x", "--workdir", "/r", "--logs-every", "0", *ZONE], "--logs-every"),
    ("collect", ["--workdir", "gs://x", *ZONE], "gs://BUCKET/RUN"),
    ("run", ["my-tpu", "x", "--workdir", "/gcs/bkt/r", "--accelerator-type", "v5p-8", *ZONE],
     "gs://BUCKET/RUN"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", *ZONE], "--accelerator-type"),
    ("run", ["my-tpu", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8", *ZONE], "EXPERIMENT"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8"], "--zone"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v9-8", *ZONE],
     "accelerator type"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8", "--env",
             "oops", *ZONE], "--env KEY=VALUE"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8", "bad",
             *ZONE], "section.key=value"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8",
             "--max-attempts", "0", *ZONE], "--max-attempts"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8",
             "--backoff", "1m", *ZONE], "--backoff"),
    ("run", ["my-tpu", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v5p-8",
             "--preemptible", *ZONE], "--preemptible"),
    ("logs", [*ZONE], "TPU name"),
    ("logs", ["my-tpu", *ZONE, "--worker", "x"], "--worker"),
    ("collect", ["my-tpu", *ZONE], "--workdir"),
    ("collect", ["--workdir", "/home/me/run1", *ZONE], "TPU name"),
    ("teardown", ["my-tpu"], "--zone"),
    ("teardown", ["my-tpu", *ZONE, "--bogus"], "--bogus"),
    ("teardown", ["My_TPU", *ZONE], "lowercase"),
    ("teardown", ["my-tpu", "--zone"], "--zone needs a value"),
])
def test_bad_input_is_one_line_exit_2(stub_bin, script, args, needle):
    r = run(script, *args, "--dry-run", stub=stub_bin)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    err = r.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(f"tpu/{script}.sh: error: "), r.stderr
    assert needle in err[0]


# ---------------------------------------------------------------- remote snippets, run locally


def test_every_remote_command_parses(stub_bin):
    """Each --command string is valid bash (what the worker's login shell runs)."""
    invocations = [
        ("setup", "t", *ZONE, "--bucket", "my-bucket"),
        ("setup", "t", *ZONE, "--git-url", "https://example.com/x.git", "--git-ref", "v1"),
        ("launch", "t", "tiny_multiskill", "--workdir", "/gcs/bkt/r", "--profile-steps", "2:4",
         "a.b=it's", *ZONE),
        ("launch", "t", "x", "--workdir", "gs://bkt/r", "--env", "A=it's \"q\" $HOME", *ZONE),
        ("launch", "t", "--stop", *ZONE),
        ("logs", "t", *ZONE), ("logs", "t", "--all", *ZONE),
        ("run", "t", "x", "--workdir", "gs://bkt/r", "--accelerator-type", "v4-8", *ZONE),
    ]
    ssh = [c for inv in invocations for c in dry(*inv, stub=stub_bin) if "ssh" in c]
    assert len(ssh) == 14
    for cmd in ssh:
        r = subprocess.run(["bash", "-n", "-c", remote(cmd)], capture_output=True, text=True)
        assert r.returncode == 0, (remote(cmd), r.stderr)
        if "ifp_logs/r.sh" in remote(cmd):  # the wrapper script it writes
            r = subprocess.run(["bash", "-n", "-c", "\n".join(shlex.split(wrapper(cmd)))],
                               capture_output=True, text=True)
            assert r.returncode == 0, (wrapper(cmd), r.stderr)



@pytest.fixture()
def worker_home(tmp_path):
    """A fake worker home: ~/ifp_jax and a stub ~/ifp_venv/bin/ifp that prints its arguments,
    then waits; SIGTERM makes it log and exit (as `ifp train` saves a checkpoint)."""
    home = tmp_path / "home"
    (home / "ifp_jax").mkdir(parents=True)
    ifp = home / "ifp_venv" / "bin" / "ifp"
    ifp.parent.mkdir(parents=True)
    ifp.write_text("#!/usr/bin/env bash\ntrap 'echo got-SIGTERM; exit 0' TERM\n"
                   "printf '[%s]\\n' \"$@\"\nwhile :; do sleep 0.05; done\n")
    ifp.chmod(0o755)
    return home


def on_worker(cmd: str, home: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=20)


def wait_for(pred, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_launch_snippet_detaches_refuses_twice_and_stops(stub_bin, worker_home):
    odd = "data.note=it's a b"
    (launch,) = dry("launch", "my-tpu", "tiny_multiskill", "--workdir", "/gcs/bkt/run 1",
                    "train.steps=10", odd, "--run", "run1", *ZONE, stub=stub_bin)
    (stop,) = dry("launch", "my-tpu", "--stop", *ZONE, stub=stub_bin)
    (tail,) = dry("logs", "my-tpu", "--no-follow", *ZONE, stub=stub_bin)
    logs = worker_home / "ifp_logs"
    pid = None
    try:
        r = on_worker(remote(launch), worker_home)  # returns at once: the job is detached
        assert r.returncode == 0, r.stderr
        pid = int((logs / "run1.pid").read_text())
        assert alive(pid) and os.getsid(pid) == pid  # its own session: ssh hangup can't reach it
        assert (logs / "latest.pid").resolve() == (logs / "run1.pid").resolve()
        args = ["[train]", "[tiny_multiskill]", "[--workdir]", "[/gcs/bkt/run 1]",
                "[train.steps=10]", f"[{odd}]"]
        assert wait_for(lambda: (logs / "run1.log").read_text().split("\n")[:6] == args)

        again = on_worker(remote(launch), worker_home)
        assert again.returncode == 1 and "already running" in again.stderr

        shown = on_worker(remote(tail), worker_home)
        assert f"[{odd}]" in shown.stdout

        s = on_worker(remote(stop), worker_home)
        assert "sent SIGTERM" in s.stdout
        assert wait_for(lambda: not alive(pid))
        assert "got-SIGTERM" in (logs / "run1.log").read_text()
        assert "no ifp train running" in on_worker(remote(stop), worker_home).stdout
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_setup_unpack_snippet(stub_bin, worker_home, tmp_path):
    src = tmp_path / "src"
    (src / "ifp_jax").mkdir(parents=True)
    (src / "setup.cfg").write_text("[metadata]\nname = ifp_jax\n")
    with tarfile.open(worker_home / "ifp_jax_src.tar.gz", "w:gz") as tf:
        for p in src.rglob("*"):
            tf.add(p, arcname=str(p.relative_to(src)))
    (worker_home / "ifp_jax" / "stale.py").write_text("")
    unpack = dry("setup", "my-tpu", *ZONE, stub=stub_bin)[2]
    r = on_worker(remote(unpack), worker_home)
    assert r.returncode == 0, r.stderr
    assert (worker_home / "ifp_jax" / "setup.cfg").exists()
    assert not (worker_home / "ifp_jax" / "stale.py").exists()
    assert not (worker_home / "ifp_jax_src.tar.gz").exists()


# ---------------------------------------------------------------- exit codes, --env, run.sh loop


def fake_ifp(home: Path, codes: list[int], *, before_exit: str = "") -> None:
    """~/ifp_venv/bin/ifp standing in for `ifp train`: logs its arguments and $ODD, then exits
    with the next of `codes` (one per run, counted in ~/runs)."""
    ifp = home / "ifp_venv" / "bin" / "ifp"
    ifp.write_text(
        "#!/usr/bin/env bash\nn=$(cat ~/runs 2>/dev/null || echo 0); echo $((n + 1)) > ~/runs\n"
        "printf '[%s]\\n' \"$@\"; printf 'ODD=<%s>\\n' \"${ODD-unset}\"\n"
        f"codes=({' '.join(map(str, codes))}); {before_exit}\nsleep 0.2; exit ${{codes[$n]}}\n")
    ifp.chmod(0o755)


@pytest.fixture()
def fake_cloud(tmp_path, worker_home):
    """A stub gcloud: a queued resource whose state lives in `qr_state` (created ACTIVE, deleted
    with the file, which also kills the worker's job and clears ~/ifp_logs, as losing the VM would); `tpu-vm ssh` runs
    launch/status snippets (the ones touching ~/ifp_logs) on the fake worker and only records
    setup's; `storage cp` copies into tmp_path/bucket."""
    d = tmp_path / "cloud_bin"
    d.mkdir()
    (d / "git").write_text("#!/bin/sh\nexit 0\n")
    calls, state, bucket = tmp_path / "calls", tmp_path / "qr_state", tmp_path / "bucket"
    (d / "gcloud").write_text(f"""#!/usr/bin/env bash
[[ $1 == storage ]] || echo "$*" >> {calls}
case "$*" in
  "compute tpus queued-resources create"*) echo ACTIVE > {state} ;;
  "compute tpus queued-resources describe"*) cat {state} 2>/dev/null || {{ echo NOT_FOUND >&2; exit 1; }} ;;
  "compute tpus queued-resources delete"*) rm -f {state}
    p=$(cat {worker_home}/ifp_logs/latest.pid 2>/dev/null) && kill -KILL -- "-$p" 2>/dev/null
    rm -rf {worker_home}/ifp_logs ;;  # the next slice's workers start afresh
  "compute tpus tpu-vm ssh"*) c=${{*: -1}}; [[ $c != *ifp_logs* ]] || HOME={worker_home} bash -c "$c" ;;
  "storage cp "*) dst={bucket}/${{4#gs://}}; mkdir -p "$(dirname "$dst")" && cp "$3" "$dst" ;;
esac
""")
    for f in ("git", "gcloud"):
        (d / f).chmod(0o755)
    return d


def on_fake_worker(cmd: str, home: Path, cloud: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": f"{cloud}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=20)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_launch_wrapper_records_exit_code_env_and_uploads_log(stub_bin, worker_home, fake_cloud,
                                                               tmp_path):
    odd = """a b 'single' "double" $HOME `x` \\ ;"""
    fake_ifp(worker_home, [75, 0])
    (launch,) = dry("launch", "my-tpu", "tiny_multiskill", "--workdir", "gs://bkt/run1",
                    "--env", f"ODD={odd}", "--logs-every", "1", *ZONE, stub=stub_bin)
    (status,) = [c for c in dry("run", "my-tpu", "tiny_multiskill", "--workdir", "gs://bkt/run1",
                                "--accelerator-type", "v4-8", *ZONE, stub=stub_bin)
                 if "--worker=0" in c]
    logs, host = worker_home / "ifp_logs", os.uname().nodename
    for expect in ("75", "0"):
        r = on_fake_worker(remote(launch), worker_home, fake_cloud)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: (logs / "run1.exit").exists())
        assert (logs / "run1.exit").read_text().strip() == expect
        shown = on_fake_worker(remote(status), worker_home, fake_cloud).stdout
        assert shown.strip() == f"exit {expect}"
        uploaded = (tmp_path / "bucket" / "bkt" / "run1" / "logs" / f"{host}.log").read_text()
        assert f"ODD=<{odd}>" in uploaded and f"ifp train exited with {expect}" in uploaded
    assert "[--workdir]\n[gs://bkt/run1]" in (logs / "run1.log").read_text()


def run_loop(fake_cloud, *args: str) -> subprocess.CompletedProcess:
    return run("run", "my-tpu", "tiny_multiskill", "--workdir", "gs://bkt/run1",
               "--accelerator-type", "v5p-16", "--spot", *ZONE, "--poll", "0", "--backoff", "0",
               "--logs-every", "1", "train.steps=10", *args, stub=fake_cloud)


def qr_calls(tmp_path) -> list[str]:
    return [c.split()[3] for c in (tmp_path / "calls").read_text().splitlines()
            if c.startswith("compute tpus queued-resources") and "describe" not in c]


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_run_relaunches_after_exit_75_until_done(fake_cloud, worker_home, tmp_path):
    fake_ifp(worker_home, [75, 0])
    r = run_loop(fake_cloud)
    assert r.returncode == 0, r.stderr
    assert qr_calls(tmp_path) == ["create", "delete", "create", "delete"]
    assert "exit 75" in r.stderr and "done: ifp train completed on attempt 2" in r.stderr
    assert (worker_home / "runs").read_text().strip() == "2"
    assert not (tmp_path / "qr_state").exists()  # the slice is deleted at the end
    assert "--spot" in (tmp_path / "calls").read_text()


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_run_relaunches_when_the_slice_is_suspended(fake_cloud, worker_home, tmp_path):
    # First run: the slice is preempted under the job (which never exits by itself).
    fake_ifp(worker_home, [0, 0], before_exit=f'[ "$n" = 0 ] && echo SUSPENDED > '
                                              f'{tmp_path}/qr_state && sleep 30')
    r = run_loop(fake_cloud)
    assert r.returncode == 0, r.stderr
    assert "is SUSPENDED: preempted" in r.stderr
    assert qr_calls(tmp_path) == ["create", "delete", "create", "delete"]


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_run_stops_on_a_real_failure_and_names_the_logs(fake_cloud, worker_home, tmp_path):
    fake_ifp(worker_home, [3])
    r = run_loop(fake_cloud, "--keep")
    assert r.returncode == 1
    assert "ifp train failed (exit 3) on attempt 1" in r.stderr
    assert "gs://bkt/run1/logs/" in r.stderr.splitlines()[-1]
    assert qr_calls(tmp_path) == ["create"]  # --keep: left up for inspection
    assert (tmp_path / "qr_state").read_text().strip() == "ACTIVE"


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid not installed")
def test_run_gives_up_after_max_attempts(fake_cloud, worker_home, tmp_path):
    fake_ifp(worker_home, [75, 75, 75])
    r = run_loop(fake_cloud, "--max-attempts", "2")
    assert r.returncode == 1 and "gave up after 2 attempts" in r.stderr
    assert qr_calls(tmp_path) == ["create", "delete", "create", "delete"]


def test_run_dry_run_is_one_attempt_in_order(stub_bin):
    cmds = dry("run", "my-tpu", "tiny_multiskill", "--workdir", "gs://bkt/run1", "--accelerator-type",
               "v5p-16", "--reserved", "--env", "A=b c", "--bucket", "bkt", "train.steps=10", *ZONE,
               stub=stub_bin)
    words = [line(c) for c in cmds]
    assert words[0] == ("gcloud compute tpus queued-resources create my-tpu --zone us-east5-a "
                        "--node-id my-tpu --accelerator-type v5p-16 "
                        "--runtime-version v2-alpha-tpuv5 --reserved")
    assert words[1] == words[-2] == ("gcloud compute tpus queued-resources describe my-tpu "
                                     "--zone us-east5-a --format=value(state.state)")
    assert cmds[2][:4] == ["git", "-C", str(ROOT), "archive"]
    assert any("gcsfuse" in w for w in words)
    launch = next(c for c in cmds if "setsid" in line(c))
    assert "export A='b c'" in shlex.split(wrapper(launch))
    assert "train.steps=10" in wrapper(launch)
    assert "--worker=0" in cmds[-3] and "~/ifp_logs/run1.exit" in remote(cmds[-3])
    assert words[-1] == ("gcloud compute tpus queued-resources delete my-tpu --zone us-east5-a "
                         "--force --quiet")
