"""JSON files the project writes and reads back: written whole or not at all, read with one-line
errors.

A process killed mid-write leaves the old file, never half of the new one (storage/paths.py:
a local file is replaced by rename, an object in a bucket by one whole upload). A file that is cut short, not UTF-8 or not
a JSON object is one error line naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from ifp_jax.storage import paths


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """json.dump(obj) into `path` (local or gs://), atomically."""
    paths.write_atomic(path, json.dumps(obj, **dump_kwargs))


def read_object(path: str, error: type[Exception], fix: str) -> dict:
    """The JSON object in `path`; `error(one line ending in fix)` if it is not one."""
    try:
        obj = json.loads(paths.read_bytes(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid UTF-8 JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} must hold a JSON object, not {type(obj).__name__}; {fix}")
    return obj
