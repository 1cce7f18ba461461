"""Errors that stop a run with one line (the CLI prints it, no traceback): a non-finite loss under
train.nan_policy=stop, a checkpoint save that fails (disk full, quota, file-size limit).

Orbax writes arrays through tensorstore from background threads; a failed write reaches us as a
ValueError whose text carries the OS error deep inside (`... Failed to write 43014 bytes to file
9: File too large [os_error_code='27']`). `short_cause` digs that out. Orbax also logs the failure
at ERROR with a traceback per thread; `quiet_orbax_tracebacks` keeps those messages and drops
their tracebacks (IFP_DEBUG=1 keeps everything). The save's other writes fail after ours has
been reported, and each used to print a traceback (hundreds of lines around our one line, once
splitting it): tensorstore hands its result to an asyncio loop orbax has already closed (the
`RuntimeError: Event loop is closed` goes to `sys.unraisablehook`), and at exit asyncio logs
each orbax write task whose failure nobody awaited ("Task exception was never retrieved").
Both are dropped, the second only once `report_failed_save` has been called.
"""

from __future__ import annotations

import logging
import os
import re
import sys

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


_save_failed = False  # set once a failed save has been reported: its stragglers are redundant


def report_failed_save() -> None:
    """From now on, asyncio's reports of orbax write tasks that failed are dropped."""
    global _save_failed
    _save_failed = True


def _raised_in_orbax(tb) -> bool:
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _NoFailedSaveStragglers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_save_failed and record.exc_info and _raised_in_orbax(record.exc_info[2]))


def _is_closed_loop_callback(exc_type, value, tb) -> bool:
    """A result delivered to an asyncio loop that was already closed (nothing left to run it)."""
    if exc_type is not RuntimeError or str(value) != "Event loop is closed" or tb is None:
        return False
    return tb.tb_frame.f_code.co_name == "call_soon_threadsafe"  # called from outside Python


def _drop_closed_loop_callbacks(hook):
    def unraisablehook(unraisable):
        if not _is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                        unraisable.exc_traceback):
            hook(unraisable)
    unraisablehook.ifp_quiet = True
    return unraisablehook


def quiet_orbax_tracebacks() -> None:
    """Orbax's log records keep their message but lose their traceback; results for its
    closed event loops and (after `report_failed_save`) asyncio's reports of its failed write
    tasks print nothing. Installed once per process."""
    if os.environ.get("IFP_DEBUG"):
        return
    for name, kind in (("absl", _NoOrbaxTracebacks), ("asyncio", _NoFailedSaveStragglers)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    if not getattr(sys.unraisablehook, "ifp_quiet", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
