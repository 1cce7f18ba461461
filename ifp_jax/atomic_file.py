"""Whole-or-nothing file writes: a process killed mid-write leaves the old file, never half of
the new one (the new text goes to a temporary file beside it, then replaces it by rename)."""

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
