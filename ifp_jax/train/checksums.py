"""CRC32C of every file of a finished checkpoint step, recorded at save, checked at restore.

Orbax detects a missing or truncated file (the restore fails), but a flipped bit inside array
data restores silently as a wrong weight (tested: tensorstore's OCDBT chunks carry no checksum
of their own). So once a step is finished, each process records the files it wrote in
DIR/checksums/<step>.process_<i>.json, outside orbax's directory (which orbax owns).

Built to scale to 100+ GiB checkpoints on many hosts:
  - at save, each process records only its own files, in a background thread of the trainer;
  - at restore, the files of a step are dealt out among the processes (file i to process
    i mod N), each checks its share while the restore runs, and one decision is agreed;
  - the digest is CRC32C (hardware-accelerated, several GB/s, so checking adds little to a
    restore that reads the same bytes); in a bucket it is the object's own CRC32C, which Cloud
    Storage computes and keeps: checking reads metadata, not the data. Both are the same
    number, so a checkpoint copied between disk and bucket still checks.
A step without a record (saved by an older ifp_jax, or killed between orbax's commit and the
record) restores unchecked. Records of older versions (SHA-256) are still checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

import google_crc32c

from ifp_jax.storage import paths

_CHUNK = 4 << 20
_PROCESS = re.compile(r"process_(\d+)")


def _read_digest(path: str, algorithm: str) -> str:
    h = hashlib.sha256() if algorithm == "sha256" else google_crc32c.Checksum()
    with paths.open_file(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest().decode() if algorithm == "crc32c" else h.hexdigest()


def crc32c(path: str) -> str:
    """Hex CRC32C of a file: computed locally, or the object's stored one in a bucket."""
    if paths.is_remote(path):
        return base64.b64decode(paths.object_info(path)["crc32c"]).hex()
    return _read_digest(path, "crc32c")


def _owner(relpath: str) -> int:
    """The process that wrote a file: the N of 'process_N' in its path, else process 0."""
    match = _PROCESS.search(relpath)
    return int(match.group(1)) if match else 0


def record_path(checksum_dir: str, step: int, process: int) -> str:
    return paths.join(checksum_dir, f"{step}.process_{process}.json")


def write_record(step_dir: str, checksum_dir: str, step: int, process: int) -> None:
    """Records size and CRC32C of the files of finished step `step_dir` that `process` wrote;
    the record is written atomically."""
    files = {}
    for rel in paths.walk_files(step_dir):
        if _owner(rel) == process:
            path = paths.join(step_dir, rel)
            files[rel] = {"bytes": paths.size(path), "crc32c": crc32c(path)}
    paths.makedirs(checksum_dir)
    paths.write_atomic(record_path(checksum_dir, step, process),
                       json.dumps({"step": step, "process": process, "files": files}, indent=0))


def remove_stale_records(checksum_dir: str, steps: set[int], process: int) -> None:
    """Drops this process's records of steps orbax has deleted (checkpoint.keep)."""
    for path in paths.glob(paths.join(checksum_dir, f"*.process_{process}.json")):
        step = paths.basename(path).split(".", 1)[0]
        if step.isdigit() and int(step) not in steps:
            paths.remove(path)


def has_record(checksum_dir: str, step: int, process: int) -> bool:
    return paths.exists(record_path(checksum_dir, step, process))


def damaged_files(step_dir: str, checksum_dir: str, step: int, *, share: tuple[int, int] = (0, 1)
                  ) -> list[str] | None:
    """Files of the step that are missing, resized or altered since they were recorded (paths),
    [] if all match, None if the step has no record to check against. `share=(i, n)`: only
    the files i, i + n, i + 2n, ... of the step's sorted file list (process i of n)."""
    records = paths.glob(paths.join(checksum_dir, f"{step}.process_*.json"))
    if not records:
        return None
    bad, listed = [], []
    for record in records:
        try:
            files = json.loads(paths.read_text(record))["files"]
        except (OSError, ValueError, KeyError):
            bad.append(record)  # the record itself is damaged: do not trust the step
            continue
        for rel, want in files.items():
            if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
                bad.append(record)  # a record naming files outside its step was not ours
                break
            listed.append((rel, want))
    index, count = share
    for rel, want in sorted(listed, key=lambda item: item[0])[index::count]:
        path = paths.join(step_dir, rel)
        if not paths.isfile(path) or paths.size(path) != want["bytes"]:
            bad.append(path)
        elif "crc32c" in want and crc32c(path) != want["crc32c"]:
            bad.append(path)
        elif "sha256" in want and _read_digest(path, "sha256") != want["sha256"]:
            bad.append(path)
    return bad
