"""One `ifp train` job per workdir: an exclusive lock taken before anything in it is touched.

Process 0 of a job holds an advisory `fcntl.flock` on DIR/.lock for the whole run (the file
names the holder). A second job on the same workdir is refused with one line and exits before
reading or writing anything; the lock dies with its process, so a killed run never leaves a
stale lock behind. Other processes of the same job learn the outcome from process 0 (one
broadcast), so all of them stop together. flock is honoured by local filesystems and NFS; on a
FUSE-mounted bucket it protects only against a second job on the same host. A `gs://` workdir
gets a lock object instead (storage/object_lock.py: created with a generation precondition,
renewed while the job runs, taken over when stale).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from ifp_jax import distributed
from ifp_jax.config import ConfigError
from ifp_jax.storage import paths
from ifp_jax.workdir import LOCK_FILE


class WorkdirLock:
    def __init__(self, workdir: str, stale_after_s: float = 600.0):
        self.path = paths.join(workdir, LOCK_FILE)
        self.stale_after_s = stale_after_s
        self._fd = None
        self._object_lock = None

    def acquire(self) -> None:
        """Takes the lock on process 0; raises ConfigError on every process if it is held."""
        distributed.on_primary(self._lock_or_raise)

    def _lock_or_raise(self) -> None:
        error = self._try_lock()
        if error:
            raise ConfigError(error)

    def check_held(self) -> None:
        """Raises ConfigError on every process if another job took the lock over (ours was
        thought dead): two jobs must not write one workdir."""
        if distributed.agree_with_primary(self._object_lock is not None
                                          and self._object_lock.lost):
            raise ConfigError(f"another job took over the lock {self.path} (this one was "
                              f"thought dead: lock not renewed for {self.stale_after_s:.0f}s); "
                              f"stopped without saving; use one job per --workdir")

    def _try_lock(self) -> str:
        if paths.is_remote(self.path):
            from ifp_jax.storage.object_lock import ObjectLock
            self._object_lock = ObjectLock(self.path, self.stale_after_s)
            return self._object_lock.acquire()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            os.close(fd)
            who = f" (pid {holder.get('pid', '?')} on {holder.get('host', '?')})" if holder else ""
            return (f"workdir {os.path.dirname(self.path)} is in use by another `ifp train`{who}; "
                    f"wait for it to end or use another --workdir (nothing was changed)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self._fd = fd
        return ""

    def release(self) -> None:
        if self._object_lock is not None:
            self._object_lock.release()
            self._object_lock = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
