"""A user's instruction mixture on disk: one task per JSONL file, or one JSONL with a task field.

`data.jsonl_path` names either
  a directory   DIR/*.jsonl, one task per file, named by the file's stem (DIR/sort.jsonl ->
                task 'ifp_user_sort'), plus an optional DIR/manifest.json;
  a file        whose lines all carry a string 'task' field (one task per value), plus an optional
                manifest next to it: my.jsonl -> my.manifest.json;
  a file        without 'task' fields: the single task 'ifp_jsonl' (tasks.py), as before.
Every line is {"prompt": str, "response": str} (+ "task"). The manifest gives, per task, the
instruction text its per-task mask is selected from and its mixture rate (default 1):
  {"sort": {"instruction": "sort the letters", "rate": 2.0}, ...}
The tasks form the mixture 'ifp_user' (data.mixture=ifp_user); each task holds out every 20th
example for its own evaluation.

TensorFlow-free (read by `ifp export --task`, which must start fast); tasks.py registers the
SeqIO tasks from what this reads.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import json
import os
import re

from ifp_jax.errors import DataError
from ifp_jax.json_files import read_object

USER_PREFIX = "ifp_user_"
USER_MIXTURE = "ifp_user"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_MANIFEST_KEYS = ("instruction", "rate")


@dataclasses.dataclass(frozen=True)
class UserTask:
    name: str  # the SeqIO task name: USER_PREFIX + the file stem or 'task' value
    examples: tuple  # ({"prompt": str, "response": str}, ...) in file order
    instruction: str | None  # from the manifest; None if it gives none
    rate: float


def read_jsonl(path: str) -> list[dict]:
    """Parses {"prompt": str, "response": str} lines (an optional string "task" is kept);
    errors name `file:line` and the fix."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such JSONL file; set data.jsonl_path to an existing file")
    examples = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not UTF-8; re-encode the file as UTF-8") \
                    from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not (isinstance(obj, dict) and isinstance(obj.get("prompt"), str)
                    and isinstance(obj.get("response"), str)):
                raise DataError(f"{path}:{lineno}: expected JSON object with string fields "
                                f"'prompt' and 'response'")
            if not obj["prompt"].strip():
                raise DataError(f"{path}:{lineno}: empty 'prompt'; every example needs a "
                                f"non-empty prompt for the predictor to read")
            example = {"prompt": obj["prompt"], "response": obj["response"]}
            if "task" in obj:
                if not isinstance(obj["task"], str) or not _NAME.match(obj["task"]):
                    raise DataError(f"{path}:{lineno}: 'task' must be a name of letters, digits "
                                    f"and '_', got {obj['task']!r}")
                example["task"] = obj["task"]
            examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples; add lines like "
                        f'{{"prompt": "...", "response": "..."}}')
    return examples


def is_multitask(path: str) -> bool:
    """Whether data.jsonl_path holds several tasks (a directory, or lines with 'task'): reads
    the first non-blank line only (read_jsonl validates the whole file later)."""
    if os.path.isdir(path):
        return True
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:  # read_jsonl names a bad line
        first = next((line for line in f if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False  # read_jsonl reports the line
    return isinstance(obj, dict) and "task" in obj


def _manifest_path(path: str) -> str:
    if os.path.isdir(path):
        return os.path.join(path, MANIFEST)
    return os.path.splitext(path)[0] + ".manifest.json"


def _read_manifest(path: str, tasks: list[str]) -> dict:
    if not os.path.isfile(path):
        return {}
    manifest = read_object(path, DataError, 'expected an object mapping task names to '
                                            '{"instruction": "...", "rate": 1.0}')
    for task, entry in manifest.items():
        if task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=1, cutoff=0.3)
            hint = f"did you mean '{close[0]}'?" if close else f"tasks: {', '.join(tasks)}"
            raise DataError(f"{path}: task '{task}' has no examples; {hint}")
        if not isinstance(entry, dict) or set(entry) - set(_MANIFEST_KEYS):
            raise DataError(f"{path}: entry of '{task}' must be an object with keys among "
                            f"{', '.join(_MANIFEST_KEYS)}")
        if "instruction" in entry and not (isinstance(entry["instruction"], str)
                                           and entry["instruction"].strip()):
            raise DataError(f"{path}: '{task}' instruction must be a non-empty string")
        rate = entry.get("rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
            raise DataError(f"{path}: '{task}' rate must be a number >= 0, got {rate!r}")
    return manifest


def source_stats(path: str) -> tuple:
    """(file, mtime, size) of every file the tasks are read from: a cache key / fingerprint."""
    files = sorted(glob.glob(os.path.join(path, "*"))) if os.path.isdir(path) else [path]
    files.append(_manifest_path(path))
    return tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files
                 if os.path.isfile(f))


def read_user_tasks(path: str) -> list[UserTask]:
    """The tasks of a multi-task data.jsonl_path (see the module docstring), sorted by name."""
    return list(_read_cached(os.path.abspath(path), source_stats(path)))


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtimes: tuple) -> tuple:
    del mtimes  # the cache key: files edited since are read again
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.jsonl")))
        if not files:
            raise DataError(f"{path}: no *.jsonl files; put one file per task in it")
        by_task = {}
        for file in files:
            stem = os.path.splitext(os.path.basename(file))[0]
            if not _NAME.match(stem):
                raise DataError(f"{file}: a task file's name must be letters, digits and '_' "
                                f"(it names the task); rename it")
            by_task[stem] = [{"prompt": e["prompt"], "response": e["response"]}
                             for e in read_jsonl(file)]
    else:
        by_task = {}
        for i, e in enumerate(read_jsonl(path)):
            if "task" not in e:
                raise DataError(f"{path}: example {i + 1} has no 'task' field; give every "
                                f"line one, or none (a single task)")
            by_task.setdefault(e["task"], []).append({"prompt": e["prompt"],
                                                      "response": e["response"]})
    manifest = _read_manifest(_manifest_path(path), sorted(by_task))
    return tuple(UserTask(name=USER_PREFIX + task, examples=tuple(by_task[task]),
                          instruction=manifest.get(task, {}).get("instruction"),
                          rate=float(manifest.get(task, {}).get("rate", 1.0)))
                 for task in sorted(by_task))


def user_instruction(task: str, path: str) -> str:
    """The manifest's instruction text of user task `task` (SeqIO name or bare name)."""
    bare = task[len(USER_PREFIX):] if task.startswith(USER_PREFIX) else task
    for t in read_user_tasks(path):
        if t.name == USER_PREFIX + bare:
            if t.instruction is None:
                raise DataError(f"task '{t.name}' has no instruction text; add "
                                f'{{"{bare}": {{"instruction": "..."}}}} to '
                                f"{_manifest_path(path)}")
            return t.instruction
    known = ", ".join(t.name for t in read_user_tasks(path))
    raise DataError(f"no user task '{task}' in {path} (tasks: {known})")
