"""SHA-256 of every file of a finished checkpoint step, checked before the step is restored.

Orbax detects a missing or truncated file (the restore fails), but a flipped bit inside array
data restores silently as a wrong weight (tested: tensorstore's OCDBT chunks carry no checksum
of their own). So once a step is finished, each process hashes the files it wrote and records
them in DIR/checksums/<step>.process_<i>.json, outside orbax's directory (which orbax owns);
before a restore, every listed file is hashed again and compared. A step without a record
(saved by an older ifp_jax, or killed between orbax's commit and the record) restores unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from ifp_jax.storage import paths

_CHUNK = 1 << 20
_PROCESS = re.compile(r"process_(\d+)")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with paths.open_file(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _owner(relpath: str) -> int:
    """The process that wrote a file: the N of 'process_N' in its path, else process 0."""
    match = _PROCESS.search(relpath)
    return int(match.group(1)) if match else 0


def record_path(checksum_dir: str, step: int, process: int) -> str:
    return paths.join(checksum_dir, f"{step}.process_{process}.json")


def write_record(step_dir: str, checksum_dir: str, step: int, process: int) -> None:
    """Hashes the files of finished step `step_dir` that `process` wrote; written atomically."""
    files = {}
    for rel in paths.walk_files(step_dir):
        if _owner(rel) == process:
            path = paths.join(step_dir, rel)
            files[rel] = {"bytes": paths.size(path), "sha256": _sha256(path)}
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


def damaged_files(step_dir: str, checksum_dir: str, step: int) -> list[str] | None:
    """Files of the step that are missing, resized or altered since they were recorded (paths),
    [] if all match, None if the step has no record to check against."""
    records = paths.glob(paths.join(checksum_dir, f"{step}.process_*.json"))
    if not records:
        return None
    bad = []
    for record in records:
        try:
            files = json.loads(paths.read_text(record))["files"]
        except (OSError, ValueError, KeyError):
            bad.append(record)  # the record itself is damaged: do not trust the step
            continue
        for rel, want in sorted(files.items()):
            if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
                bad.append(record)  # a record naming files outside its step was not ours
                break
            path = paths.join(step_dir, rel)
            if (not paths.isfile(path) or paths.size(path) != want["bytes"]
                    or _sha256(path) != want["sha256"]):
                bad.append(path)
    return bad
