"""Errors that stop a run with one line (the CLI prints it, no traceback): a non-finite loss under
train.nan_policy=stop, a checkpoint save that fails (disk full, quota, file-size limit).

Orbax writes arrays through tensorstore from background threads; a failed write reaches us as a
ValueError whose text carries the OS error deep inside (`... Failed to write 43014 bytes to file
9: File too large [os_error_code='27']`). `short_cause` digs that out. Orbax also logs the failure
at ERROR with a traceback per thread; `quiet_orbax_tracebacks` keeps those messages and drops
their tracebacks (IFP_DEBUG=1 keeps everything). Tensorstore may still print `RuntimeError:
Event loop is closed` for the save's other writes, from its own threads, which we cannot filter.
"""

from __future__ import annotations

import logging
import os
import re

_OS_ERROR = re.compile(r"([^:\[\]]+?)\s*\[os_error_code='(\d+)'\]")


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient under train.nan_policy=stop; the last checkpoint is intact."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written: the run stops with one line; the checkpoints
    already finished are untouched."""


def short_cause(e: BaseException) -> str:
    """The innermost error, short: the OS error text (e.g. 'No space left on device, errno
    28') when tensorstore's message carries one, else its type and first line."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e)
    os_error = _OS_ERROR.search(text)
    if os_error:
        return f"{os_error.group(1).strip()}, errno {os_error.group(2)}"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class _NoOrbaxTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def quiet_orbax_tracebacks() -> None:
    """Orbax's log records keep their message but lose their traceback (once per process)."""
    if os.environ.get("IFP_DEBUG"):
        return
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _NoOrbaxTracebacks) for f in absl.filters):
        absl.addFilter(_NoOrbaxTracebacks())
