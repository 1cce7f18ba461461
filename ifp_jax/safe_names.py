"""Names that come from a user or from a file and become part of a path (task names, a split,
an exported model's vocabulary file, a prepared manifest's file list): checked before anything is
written or read, so '../x', 'a/b' or '/etc/x' cannot reach outside the directory they belong in.
"""

from __future__ import annotations

import os

PLAIN_RULE = "a plain name (no '/', '\\', '..', or absolute path)"


def is_plain(name: object) -> bool:
    """Whether `name` names an entry of a directory, never the directory itself or another."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name and os.path.basename(name) == name)


def plain_name(name: object, what: str, error: type[Exception]) -> str:
    """`name` unchanged if plain; else `error` (one line) naming it and the rule."""
    if not is_plain(name):
        raise error(f"{what} {name!r} cannot be used in a file name: it must be {PLAIN_RULE}; "
                    f"rename it")
    return name  # type: ignore[return-value]


def inside(relative: object, what: str, error: type[Exception]) -> str:
    """`relative` unchanged if it is a relative path whose every part is plain (sub-directories
    allowed); else `error` (one line) naming it."""
    parts = relative.split("/") if isinstance(relative, str) else [None]
    if not all(is_plain(p) for p in parts):
        raise error(f"{what} {relative!r} points outside its directory: it must be a relative "
                    f"path of plain names (no '..', '\\', or absolute path)")
    return relative  # type: ignore[return-value]
