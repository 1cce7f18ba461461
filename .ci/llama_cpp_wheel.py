"""Install llama-cpp-python into this interpreter's environment from a wheel built once per machine.

PyPI has no wheel of llama-cpp-python for most Linux hosts, so pip builds its sdist (llama.cpp,
C++; ~10-15 minutes on 2 cores). pip's own wheel cache would keep that build, but its key is the
sdist's URL only: it ignores CMAKE_ARGS and the CPU, so a `-march=native` wheel in a ~/.cache/pip
copied to another machine would be installed there and die on an unknown instruction. This script
keeps its own cache, keyed by the pinned version, CMAKE_ARGS, the CPU's instruction-set flags, the
machine and the C library, builds on a miss (printing progress: the build is long, not hung) and
pip-installs the wheel.

Usage: `python .ci/llama_cpp_wheel.py` (the Makefile's install step runs it with the venv's python).
Cache: $IFP_LLAMA_CPP_WHEELS, else ~/.cache/ifp_jax/llama-cpp-wheels (XDG_CACHE_HOME honoured).
"""

import configparser
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GGML_NATIVE: -march=native, the fast kernels of this CPU (the cache key carries the CPU flags).
# LLAVA_BUILD=OFF: the multimodal library (mtmd), which ifp_jax never loads. The package forces
# LLAMA_CURL=OFF itself; llama.cpp's tests/examples/tools are off as a subproject, said again here.
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF")
NINJA_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s+(\S+ \S+ \S+)?")


def pinned_requirement(setup_cfg: str = os.path.join(ROOT, "setup.cfg")) -> str:
    """The `llamacpp` extra of setup.cfg, e.g. 'llama-cpp-python==0.3.36' (the one pin)."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = [ln.strip() for ln in cfg["options.extras_require"]["llamacpp"].splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(reqs) != 1 or not re.fullmatch(r"llama-cpp-python==[\w.]+", reqs[0]):
        sys.exit(f"{setup_cfg}: the llamacpp extra must be one exact pin "
                 f"'llama-cpp-python==X.Y.Z', got {reqs}")
    return reqs[0]


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The instruction-set flags of the first CPU (x86 'flags', ARM 'Features'), sorted."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return sorted(set(value.split()))
    except OSError:
        pass
    return [platform.processor() or "unknown"]  # macOS etc.: the processor name


def key_inputs(requirement: str, cmake_args: str, flags: list[str]) -> dict:
    """Everything the built wheel depends on: a change to any of them must rebuild."""
    return {"requirement": requirement, "cmake_args": cmake_args, "cpu_flags": flags,
            "machine": platform.machine(), "system": platform.system(),
            "libc": "-".join(platform.libc_ver())}


def cache_dir(inputs: dict) -> str:
    """The wheel's directory: <cache root>/<name>-<version>-<hash of the key inputs>."""
    root = os.environ.get("IFP_LLAMA_CPP_WHEELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "ifp_jax", "llama-cpp-wheels")
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, inputs["requirement"].replace("==", "-") + "-" + digest)


def say(msg: str) -> None:
    print(f"llama_cpp_wheel: {msg}", file=sys.stderr, flush=True)


def _stream_build(cmd: list[str], env: dict, log_path: str) -> int:
    """Runs the build, writing everything to log_path and a progress line to stderr every 5% of
    ninja's steps or 60 s, whichever comes first, and scikit-build-core's phase lines."""
    start = last = time.monotonic()
    shown = -1
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            now = time.monotonic()
            m = NINJA_STEP.match(line)
            if m:
                done, total = int(m[1]), int(m[2])
                pct = 100 * done // total
                if pct // 5 > shown // 5 or now - last > 60:
                    shown, last = pct, now
                    say(f"[{done}/{total}] {pct}% {now - start:.0f} s")
            elif line.lstrip().startswith("*** "):
                say(f"{line.strip()[4:]} ({now - start:.0f} s)")
        return proc.wait()


def build(requirement: str, out_dir: str) -> str:
    """Builds the wheel into out_dir (via a temporary sibling, renamed when complete) -> path."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
    log_path = os.path.join(parent, os.path.basename(out_dir) + ".build.log")
    say(f"building {requirement} from source, once for this machine (~10-15 min on 2 cores; "
        f"CMAKE_ARGS={CMAKE_ARGS}); full log: {log_path}")
    # --no-cache-dir: keep this native wheel out of pip's cache, whose key ignores the CPU.
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
           "--no-binary", "llama-cpp-python", "-w", tmp, requirement]
    code = _stream_build(cmd, dict(os.environ, CMAKE_ARGS=CMAKE_ARGS), log_path)
    wheels = [w for w in os.listdir(tmp) if w.endswith(".whl")]
    if code or len(wheels) != 1:
        with open(log_path) as f:
            sys.stderr.writelines(f.readlines()[-25:])
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"llama_cpp_wheel: building {requirement} failed (exit {code}; last lines above, "
                 f"full log {log_path}); it needs a C/C++ compiler (gcc or clang): install one "
                 f"and run `make setup` again")
    os.replace(tmp, out_dir)
    return os.path.join(out_dir, wheels[0])


def cached_or_built_wheel(requirement: str) -> str:
    """The wheel for this machine: from the cache, else built (one build at a time per key)."""
    inputs = key_inputs(requirement, CMAKE_ARGS, cpu_flags())
    out_dir = cache_dir(inputs)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with open(out_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make setup` waits instead of building again
        if os.path.isdir(out_dir):
            wheels = [w for w in os.listdir(out_dir) if w.endswith(".whl")]
            if len(wheels) == 1:
                say(f"cached wheel {os.path.join(out_dir, wheels[0])}")
                return os.path.join(out_dir, wheels[0])
            shutil.rmtree(out_dir)  # damaged by hand: build again
        wheel = build(requirement, out_dir)
        with open(os.path.join(out_dir, "key.json"), "w") as f:
            json.dump(inputs, f, indent=1)  # what the hash in the directory name was made of
        return wheel


def main() -> None:
    wheel = cached_or_built_wheel(pinned_requirement())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", wheel], check=True)


if __name__ == "__main__":
    main()
