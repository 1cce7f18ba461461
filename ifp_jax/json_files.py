"""JSON files the project writes and reads back: written whole or not at all, read with one-line
errors.

A process killed mid-write leaves the old file, never half of the new one (the new text goes to a
temporary file beside it, then replaces it by rename). A file that is cut short, not UTF-8 or not
a JSON object is one error line naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """json.dump(obj) into `path`, atomically (rename within one directory)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, **dump_kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_object(path: str, error: type[Exception], fix: str) -> dict:
    """The JSON object in `path`; `error(one line ending in fix)` if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid UTF-8 JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} must hold a JSON object, not {type(obj).__name__}; {fix}")
    return obj
