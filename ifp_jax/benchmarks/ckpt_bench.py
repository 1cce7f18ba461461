"""`ifp bench ckpt`: checkpoint save, checksum recording and restore at a given size, on local
disk and in a bucket (a local GCS emulator), with the cost of verification as a ratio.

The state is `gb` GB of f32 arrays (random, so nothing compresses) saved by the training
loop's own Checkpointer. Timed per storage: the save until it is on storage; recording the
checksums (train/checksums.py; the trainer does it in a background thread); a restore without
verification and one with it, alternated `repeats` times (median; which goes first alternates
too), each from storage: a local step's files are dropped from the page cache first, as after a
restart. The bar: verification adds at most 15% to a restore.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np

BAR = 0.15
ARRAYS = 8


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _state(gb: float) -> dict:
    import jax
    rng = np.random.default_rng(0)
    n = int(gb * 1e9 / 4 / ARRAYS)
    return {f"w{i}": jax.device_put(rng.standard_normal(n, dtype=np.float32))
            for i in range(ARRAYS)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _evict(step_dir: str) -> None:
    """Drops a local step's files from the page cache: a restore after a restart reads them
    from the disk, not from memory (no-op for a bucket)."""
    import os

    from ifp_jax.storage import paths
    if paths.is_remote(step_dir):
        return
    for rel in paths.walk_files(step_dir):
        fd = os.open(os.path.join(step_dir, rel), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(workdir: str, state: dict, repeats: int) -> dict:
    """Save, record, restore (verify off / on) times of `state` in `workdir`."""
    import jax

    from ifp_jax.config import CheckpointConfig
    from ifp_jax.train import checksums
    from ifp_jax.train.checkpoint import Checkpointer
    from ifp_jax.storage import paths

    plain = Checkpointer(workdir, CheckpointConfig(async_save=False, verify=False, keep=1))
    save_s = _timed(lambda: (plain.save(1, state, {}), plain.wait()))
    plain.close()
    step_dir = paths.join(plain.directory, "1")
    record_s = _timed(lambda: checksums.write_record(step_dir, plain.checksum_dir, 1, 0))
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    times: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(repeats):
        # Alternate which comes first: the second restore of a pair finds the first's pages
        # and heap warm.
        for verify in ((False, True) if repeat % 2 == 0 else (True, False)):
            _evict(step_dir)
            ck = Checkpointer(workdir, CheckpointConfig(async_save=False, verify=verify))
            start = time.perf_counter()
            step, restored, _ = ck.restore_latest(abstract)
            jax.block_until_ready(restored)
            times[verify].append(time.perf_counter() - start)
            ck.close()
            assert step == 1 and ck.skipped_steps == 0
            del restored
    restore_s, verified_s = (statistics.median(times[v]) for v in (False, True))
    return {"save_s": save_s, "record_s": record_s, "restore_s": restore_s,
            "restore_verified_s": verified_s, "verify_overhead": verified_s / restore_s - 1,
            "files": len(list(paths.walk_files(step_dir)))}


def run_ckpt_bench(gb: float, *, storages: tuple[str, ...] = ("disk", "bucket"),
                   repeats: int = 3) -> dict:
    from ifp_jax.storage.emulator import Emulator
    _log(f"generating a {gb:g} GB state ({ARRAYS} f32 arrays)")
    state = _state(gb)
    result = {"gb": sum(x.size * 4 for x in state.values()) / 1e9, "repeats": repeats,
              "bar": BAR, "storages": {}}
    for storage in storages:
        _log(f"{storage}: save, record checksums, restore x{repeats} without and with "
             f"verification")
        if storage == "disk":
            with tempfile.TemporaryDirectory(prefix="ifp-bench-ckpt-") as tmp:
                result["storages"][storage] = measure(tmp, state, repeats)
            continue
        import os
        emulator = Emulator()
        saved = {k: os.environ.get(k) for k in emulator.env}
        os.environ.update(emulator.env)
        try:
            bucket = emulator.create_bucket("ifp-bench-ckpt")
            result["storages"][storage] = {**measure(f"{bucket}/run", state, repeats),
                                           "endpoint": "fake-gcs-server on 127.0.0.1"}
        finally:
            emulator.stop()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    result["meets_bar"] = all(s["verify_overhead"] <= BAR for s in result["storages"].values())
    return result


def format_report(r: dict) -> str:
    gb = r["gb"]
    lines = [f"checkpoint of {gb:.2f} GB (median of {r['repeats']} restores each)", "",
             "| storage | save | record checksums | restore | restore + verify | verify adds |",
             "|---|---|---|---|---|---|"]
    for name, s in r["storages"].items():
        lines.append(f"| {name} | {s['save_s']:.1f}s ({gb / s['save_s']:.2f} GB/s) | "
                     f"{s['record_s']:.2f}s | {s['restore_s']:.1f}s "
                     f"({gb / s['restore_s']:.2f} GB/s) | {s['restore_verified_s']:.1f}s | "
                     f"{s['verify_overhead']:+.0%} |")
    lines += ["", f"bar: verification adds <= {r['bar']:.0%} to a restore -> "
                  f"{'met' if r['meets_bar'] else 'NOT met'}"]
    return "\n".join(lines)
