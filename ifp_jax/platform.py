"""What this host can compute on, decided before JAX starts.

Three start-up decisions of the `ifp` command, kept out of the command layer so the library
(`tpu_compile.py`) can ask the same questions:
  - `pin_cpu_without_tpu`: with libtpu installed but no TPU here, pin JAX to the CPU so libtpu's
    warnings about missing TPU metadata never print;
  - `use_compilation_cache`: JAX's persistent compilation cache for commands users repeat
    (and `default_compilation_cache_dir`, also `ifp train`'s default);
  - `tune_malloc_if_cpu`: re-execute once with glibc's malloc tunables where JAX computes on
    the CPU (host_malloc.py says why).
Nothing here imports JAX: these run before it starts.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def tpu_may_be_present() -> bool:
    """TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5e, v5p, v6e), and as
    PCI devices of Google's vendor id (what JAX itself counts)."""
    if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x1ae0":
                    return True
        except OSError:
            continue
    return False


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def other_jax_plugins() -> bool:
    """JAX's PJRT plugins (jax-cuda12-plugin, ROCm, ...): the `jax_plugins` namespace package or
    the `jax_plugins` entry-point group, where JAX itself looks for them."""
    if installed("jax_plugins"):
        return True
    from importlib.metadata import entry_points
    return bool(entry_points(group="jax_plugins"))


def only_cpu_possible() -> bool:
    """No TPU may be present and no other JAX plugin (CUDA, ROCm) is installed."""
    return not (tpu_may_be_present() or other_jax_plugins())


def pin_cpu_without_tpu() -> None:
    """With libtpu installed (`ifp compile` uses it), JAX tries the TPU backend first even where
    there is none, and libtpu prints warnings about TPU worker hostnames and accelerator type
    before JAX falls back to the CPU. Rule: when JAX_PLATFORMS is unset, libtpu is installed, no
    TPU may be present (no /dev/accel*, no /dev/vfio, no Google PCI device) and no other JAX
    plugin (CUDA, ROCm) is installed, the CPU is the only backend JAX could end up on, so pin it:
    JAX_PLATFORMS=cpu. On a TPU VM (or with JAX_PLATFORMS or JAX_FORCE_TPU_INIT set) nothing
    changes and `ifp train` uses the TPU."""
    if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ:
        return
    if not (installed("libtpu") or os.environ.get("TPU_LIBRARY_PATH")):
        return
    if only_cpu_possible():
        os.environ["JAX_PLATFORMS"] = "cpu"


def cpu_is_the_backend() -> bool:
    """Whether JAX will compute on this host's CPU (JAX_PLATFORMS says so, or no accelerator is
    possible): only then do XLA:CPU's per-step buffers decide host memory behaviour."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return only_cpu_possible()


def tune_malloc_if_cpu() -> None:
    """Re-executes this process once with glibc's malloc tunables (host_malloc.py) where JAX
    will compute on the CPU; returns where it cannot help or has already happened."""
    from ifp_jax import host_malloc
    # The cheap environment check first: the re-executed process skips the device scan.
    if host_malloc.useful() and cpu_is_the_backend():
        host_malloc.reexec_with_tunables()


# Compiles shorter than this are not written to the persistent cache (JAX's default: 1 s). The
# size floor (jax_persistent_cache_min_entry_size_bytes) stays at JAX's 0: no entry is too small.
CACHE_MIN_COMPILE_SECONDS = 0.3


def default_compilation_cache_dir() -> str:
    """The user's JAX_COMPILATION_CACHE_DIR, else a per-user directory on this host
    (~/.cache/ifp_jax/xla, or under XDG_CACHE_HOME)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ifp_jax", "xla")


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache for the commands users repeat on one model (`export`,
    `generate`): the second export of a run skips the selector's compile (about 1.3 s of the
    first). Environment variables, read when JAX starts, so a user's own settings win. (`ifp
    train` sets its cache from train.compile_cache_dir: commands/train.py.)"""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", default_compilation_cache_dir())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                          str(CACHE_MIN_COMPILE_SECONDS))


def name_target_slice_to_libtpu(slice_name: str) -> None:
    """On a host without a TPU, libtpu starts by looking up the host's TPU metadata, finds none
    and prints five lines (accelerator type, worker hostnames, an INVALID_ARGUMENT trace). When
    compiling for a slice, that slice is the only TPU there is: name it, unless the user (or a
    TPU VM) did."""
    if not tpu_may_be_present():
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_name)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
