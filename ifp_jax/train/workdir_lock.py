"""One `ifp train` job per workdir: an exclusive lock taken before anything in it is touched.

Process 0 of a job holds an advisory `fcntl.flock` on DIR/.lock for the whole run (the file
names the holder). A second job on the same workdir is refused with one line and exits before
reading or writing anything; the lock dies with its process, so a killed run never leaves a
stale lock behind. Other processes of the same job learn the outcome from process 0 (one
broadcast), so all of them stop together. flock is honoured by local filesystems and NFS; on a
FUSE-mounted bucket it protects only against a second job on the same host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from ifp_jax import distributed
from ifp_jax.config import ConfigError
from ifp_jax.workdir import LOCK_FILE



class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> None:
        """Takes the lock on process 0; raises ConfigError on every process if it is held."""
        distributed.on_primary(self._lock_or_raise)

    def _lock_or_raise(self) -> None:
        error = self._try_lock()
        if error:
            raise ConfigError(error)

    def _try_lock(self) -> str:
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
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
