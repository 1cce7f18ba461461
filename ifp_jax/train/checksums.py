"""SHA-256 of every file of a finished checkpoint step, checked before the step is restored.

Orbax detects a missing or truncated file (the restore fails), but a flipped bit inside array
data restores silently as a wrong weight (tested: tensorstore's OCDBT chunks carry no checksum
of their own). So once a step is finished, each process hashes the files it wrote and records
them in DIR/checksums/<step>.process_<i>.json, outside orbax's directory (which orbax owns);
before a restore, every listed file is hashed again and compared. A step without a record
(saved by an older ifp_jax, or killed between orbax's commit and the record) restores unchecked.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re

_CHUNK = 1 << 20
_PROCESS = re.compile(r"process_(\d+)")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _owner(relpath: str) -> int:
    """The process that wrote a file: the N of 'process_N' in its path, else process 0."""
    match = _PROCESS.search(relpath)
    return int(match.group(1)) if match else 0


def record_path(checksum_dir: str, step: int, process: int) -> str:
    return os.path.join(checksum_dir, f"{step}.process_{process}.json")


def write_record(step_dir: str, checksum_dir: str, step: int, process: int) -> None:
    """Hashes the files of finished step `step_dir` that `process` wrote; written atomically."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if _owner(rel) == process:
                path = os.path.join(root, name)
                files[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    os.makedirs(checksum_dir, exist_ok=True)
    target = record_path(checksum_dir, step, process)
    with open(target + ".tmp", "w") as f:
        json.dump({"step": step, "process": process, "files": files}, f, indent=0)
    os.replace(target + ".tmp", target)


def remove_stale_records(checksum_dir: str, steps: set[int], process: int) -> None:
    """Drops this process's records of steps orbax has deleted (checkpoint.keep)."""
    for path in glob.glob(os.path.join(checksum_dir, f"*.process_{process}.json")):
        step = os.path.basename(path).split(".", 1)[0]
        if step.isdigit() and int(step) not in steps:
            os.remove(path)


def has_record(checksum_dir: str, step: int, process: int) -> bool:
    return os.path.exists(record_path(checksum_dir, step, process))


def damaged_files(step_dir: str, checksum_dir: str, step: int) -> list[str] | None:
    """Files of the step that are missing, resized or altered since they were recorded (paths),
    [] if all match, None if the step has no record to check against."""
    records = sorted(glob.glob(os.path.join(checksum_dir, f"{step}.process_*.json")))
    if not records:
        return None
    bad = []
    for record in records:
        try:
            with open(record) as f:
                files = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            bad.append(record)  # the record itself is damaged: do not trust the step
            continue
        for rel, want in sorted(files.items()):
            if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
                bad.append(record)  # a record naming files outside its step was not ours
                break
            path = os.path.join(step_dir, rel)
            if (not os.path.isfile(path) or os.path.getsize(path) != want["bytes"]
                    or _sha256(path) != want["sha256"]):
                bad.append(path)
    return bad
