"""Directories that third-party readers and writers can only handle on a local disk.

safetensors, tokenizers, the GGUF writer and llama.cpp open local files. For a `gs://` export
or import they work in a local directory that is then uploaded (`staged_output`), and a remote
one is read from a local copy (`local_copy`, cached and refreshed when the remote files change).
Large arrays never take this route: orbax reads and writes checkpoints in the bucket directly,
each process only its own shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import Iterator

from ifp_jax.storage import paths


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ifp_jax", "gcs")


def _cache_dir(url: str) -> str:
    tag = hashlib.sha256(url.encode()).hexdigest()[:16]
    return os.path.join(cache_root(), f"{paths.basename(url)}-{tag}")


def work_dir(url: str) -> str:
    """A local directory that stands for `url` across runs (a resumable preparation)."""
    path = _cache_dir(url) + ".work"
    os.makedirs(path, exist_ok=True)
    return path


def local_file(path: str) -> str:
    """`path` itself if local; else a local copy of the object (re-fetched if its size
    changed)."""
    if not paths.is_remote(path):
        return path
    target = os.path.join(_cache_dir(paths.parent(path)), paths.basename(path))
    if not (os.path.isfile(target) and os.path.getsize(target) == paths.size(path)):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        paths.write_atomic(target, paths.read_bytes(path))
    return target


def local_copy(path: str) -> str:
    """`path` itself if local; else a local copy of the remote directory, reused while every
    file under it keeps its name and size."""
    if not paths.is_remote(path):
        return path
    remote = {rel: paths.size(paths.join(path, rel)) for rel in paths.walk_files(path)}
    if not remote:
        raise FileNotFoundError(f"{path} holds no files (is the path right?)")
    target = _cache_dir(path)
    local = ({rel: os.path.getsize(os.path.join(target, rel)) for rel in paths.walk_files(target)}
             if os.path.isdir(target) else {})
    if local != remote:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fresh = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(target))
        paths.copy_tree(path, fresh)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(fresh, target)
    return target


@contextlib.contextmanager
def staged_output(out: str, *, marker: str) -> Iterator[str]:
    """Yields an empty local directory to write a whole output into; when the block succeeds
    it becomes `out`: renamed into place locally (an existing `out` is replaced only then), or
    uploaded to `gs://` with `marker` (a file inside it) uploaded last, so a reader that finds
    the marker finds every file. A failure leaves `out` as it was (locally) or without its
    marker (remote: an interrupted upload)."""
    if paths.is_remote(out):
        tmp = tempfile.mkdtemp(prefix=".ifp-stage-")
    else:
        os.makedirs(paths.parent(out), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".ifp-stage-", dir=paths.parent(out))
    try:
        yield tmp
        if not paths.is_remote(out):
            if os.path.exists(out):
                shutil.rmtree(out)
            os.rename(tmp, out)
            return
        if paths.exists(paths.join(out, marker)):
            paths.remove(paths.join(out, marker))  # readers stop trusting the old one first
        paths.rmtree(out)
        paths.copy_tree(tmp, out, skip=(marker,))
        paths.write_atomic(paths.join(out, marker),
                           paths.read_bytes(os.path.join(tmp, marker)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
