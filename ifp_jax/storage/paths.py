"""The one path layer: local paths and `gs://` URLs through the same functions.

Paths stay strings (configs, JSON records and command lines hold them); these functions give them
meaning on either kind of storage through etils.epath, the layer orbax and grain use for their
own files. Differences that matter are handled here, once:
  - an object store has no directories (`makedirs` is a no-op there) and no rename: a file is
    written whole by one upload, which readers see entirely or not at all (`write_atomic`);
  - local writes go to a temporary file that then replaces the target (rename is atomic);
  - `absolute` must not turn `gs://b/x` into `/cwd/gs:/b/x` as os.path.abspath does.
"""

from __future__ import annotations

import fnmatch
import glob as glob_lib
import os
import shutil
from typing import Iterator

from etils import epath

REMOTE_SCHEMES = ("gs://",)


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def absolute(path: str) -> str:
    """An absolute local path (~ expanded), or the URL without a trailing slash."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return os.path.join(str(base), *parts)


def basename(path: str) -> str:
    return os.path.basename(str(path).rstrip("/"))


def parent(path: str) -> str:
    return os.path.dirname(str(path).rstrip("/"))


def as_epath(path: str) -> epath.Path:
    return epath.Path(str(path))


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_remote(path) else as_epath(path).exists()


def isdir(path: str) -> bool:
    return os.path.isdir(path) if not is_remote(path) else as_epath(path).is_dir()


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    p = as_epath(path)
    return p.exists() and not p.is_dir()


def makedirs(path: str) -> None:
    """Creates a local directory (and parents); nothing to do on an object store."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names in a directory ([] if it does not exist)."""
    if not is_remote(path):
        return os.listdir(path) if os.path.isdir(path) else []
    p = as_epath(path)
    return [child.name for child in p.iterdir()] if p.is_dir() else []


def glob(pattern: str) -> list[str]:
    """Sorted matches of a pattern with `*`, `?`, `[...]` (and `**` locally)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(os.path.expanduser(pattern), recursive=True))
    fixed = pattern
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            fixed = pattern[:pattern.rfind("/", 0, i)]
            break
    if fixed == pattern:
        return [pattern] if exists(pattern) else []
    return sorted(str(p) for p in walk_files(fixed, full=True)
                  if fnmatch.fnmatchcase(str(p), pattern))


def walk_files(root: str, *, full: bool = False) -> Iterator[str]:
    """Every file under `root`, as paths relative to it (or full paths)."""
    root = str(root).rstrip("/")
    for directory, _, names in as_epath(root).walk() if is_remote(root) else os.walk(root):
        directory = str(directory)
        if is_remote(root) and not is_remote(directory):
            directory = "gs://" + directory  # gcsfs walks without the scheme
        for name in names:
            path = os.path.join(directory, name)
            # not os.path.relpath: it would normalise gs:// to gs:/
            yield path if full else path[len(root) + 1:]


def size(path: str) -> int:
    return os.path.getsize(path) if not is_remote(path) else as_epath(path).stat().length


def object_info(path: str) -> dict:
    """A bucket object's metadata (size, crc32c, md5Hash, generation...), read without its
    data."""
    import fsspec
    return fsspec.filesystem("gs").info(path)


def read_bytes(path: str) -> bytes:
    return as_epath(path).read_bytes()


def read_text(path: str) -> str:
    return as_epath(path).read_text(encoding="utf-8")


def open_file(path: str, mode: str = "rb"):
    """A file object; on an object store a "w" file is uploaded whole when it is closed."""
    if not is_remote(path):
        return open(path, mode)
    return as_epath(path).open(mode)


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes `data` to `path` so that readers see the old content or the new, never a part."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        as_epath(path).write_bytes(raw)  # one upload: the object appears when it is complete
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(path)
    else:
        as_epath(path).unlink()


def rmtree(path: str) -> None:
    """Removes a directory tree (every object under the prefix); missing is fine."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
    elif as_epath(path).exists():
        as_epath(path).rmtree()


def copy_tree(src: str, dst: str, *, skip: tuple[str, ...] = ()) -> None:
    """Copies every file under `src` (but the relative paths in `skip`) to the same relative
    path under `dst`, either side local or remote. Files are copied one by one: callers
    publish completeness by writing a marker file last."""
    for rel in walk_files(src):
        if rel in skip:
            continue
        target = join(dst, rel)
        makedirs(parent(target))
        as_epath(join(src, rel)).copy(as_epath(target), overwrite=True)
