"""One job per workdir on an object store, where no file lock exists: a lock object.

DIR/.lock is created with the precondition "no object of this name exists" (generation 0), so of
two jobs starting together exactly one creates it. It holds the holder's host, pid and the time
of its last renewal; the holder renews it every quarter of the stale timeout, each time with the
precondition "the object is still the generation I wrote" (so it learns when another job took
the lock over). A lock not renewed for `stale_after_s` belongs to a job that died (a preempted
VM releases nothing); the next job replaces it, again with a generation precondition, so of two
jobs taking over the same stale lock only one succeeds. On the same host a holder whose pid is
gone is known dead at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from ifp_jax.storage import gcs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObjectLock:
    """acquire() -> "" or the one-line reason the lock is held; release() when done."""

    def __init__(self, url: str, stale_after_s: float):
        bucket, self.key = gcs.split(url)
        self.url = url
        self.stale_after_s = stale_after_s
        self._bucket = gcs.client().bucket(bucket)
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another job replaced our lock (we were thought dead)

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "time": time.time()}).encode()

    def _write(self, if_generation_match: int) -> bool:
        """One conditional upload; False if the precondition failed."""
        from google.api_core import exceptions as api
        blob = self._bucket.blob(self.key)
        try:
            blob.upload_from_string(self._record(), if_generation_match=if_generation_match,
                                    retry=None, timeout=gcs.PROBE_TIMEOUT_S)
        except api.PreconditionFailed:
            return False
        self._generation = blob.generation
        return True

    def _holder(self) -> tuple[dict, int | None]:
        """(record, generation) of the current lock object; ({}, None) if there is none."""
        from google.api_core import exceptions as api
        blob = self._bucket.blob(self.key)
        try:
            raw = blob.download_as_bytes(timeout=gcs.PROBE_TIMEOUT_S)
        except api.NotFound:
            return {}, None
        try:
            record = json.loads(raw.decode())
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), blob.generation

    def acquire(self) -> str:
        for _ in range(3):  # the holder may vanish or be replaced between our calls
            if self._write(if_generation_match=0):
                self._start_renewing()
                return ""
            holder, generation = self._holder()
            if generation is None:
                continue
            age = time.time() - float(holder.get("time", 0) or 0)
            same_host_dead = (holder.get("host") == socket.gethostname()
                              and not _pid_alive(int(holder.get("pid", -1) or -1)))
            if age < self.stale_after_s and not same_host_dead:
                who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                return (f"workdir {os.path.dirname(self.url)} is in use by another `ifp train` "
                        f"({who}, lock renewed {age:.0f}s ago); wait for it to end or use another "
                        f"--workdir (nothing was changed); a lock not renewed for "
                        f"{self.stale_after_s / 60:g} min (checkpoint.lock_stale_minutes) is "
                        f"taken over")
            if self._write(if_generation_match=generation):
                why = "its process is gone" if same_host_dead else f"not renewed for {age:.0f}s"
                print(f"[ifp] took over the lock {self.url} of pid {holder.get('pid', '?')} on "
                      f"{holder.get('host', '?')} ({why})", file=sys.stderr)
                self._start_renewing()
                return ""
        return (f"could not take the lock {self.url} (other jobs keep replacing it); make sure "
                f"one job runs per --workdir")

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="ifp-lock-renewal", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        period = max(self.stale_after_s / 4, 1.0)
        while not self._stop.wait(period):
            try:
                if not self._write(if_generation_match=self._generation):
                    self.lost = True
                    print(f"[ifp] ERROR: the lock {self.url} was taken over by another job; "
                          f"this job stops at its next step", file=sys.stderr)
                    return
            except Exception as e:  # noqa: BLE001 - a network blip; the next renewal retries
                print(f"[ifp] warning: renewing the lock {self.url} failed "
                      f"({type(e).__name__}); retrying", file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._generation is not None and not self.lost:
            try:
                self._bucket.blob(self.key).delete(if_generation_match=self._generation,
                                                   retry=None, timeout=gcs.PROBE_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - a lock left behind goes stale, nothing more
                print(f"[ifp] warning: could not delete the lock {self.url} "
                      f"({type(e).__name__}); the next job takes it over once stale",
                      file=sys.stderr)
            self._generation = None
