"""TensorFlow and SeqIO, imported once and quietly. SeqIO uses TensorFlow for tf.data only.

Every module in this package takes `seqio` and `tf` from here (`from ifp_jax.tf_import
import seqio, tf`), so TensorFlow is imported only when something needs data (`ifp train`,
`eval`, `demo`, `compile`), never by `ifp --help`, `list` or `config`.

Importing TensorFlow on a host without CUDA prints, from C++ static initialisers and before
absl's logging is initialised, twice:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

and, when JAX was imported first, `E0000 ... cuda_platform.cc:52] failed call to cuInit`. No
environment variable reaches these: TF_CPP_MIN_LOG_LEVEL=3 (and absl, glog, gRPC variables)
set before the import was tried; TensorFlow applies its level only after these lines are
written. Besides, JAX sets TF_CPP_MIN_LOG_LEVEL=1 when it is imported first (the variable is
shared by TensorFlow and XLA), and that is left alone here: it is JAX's default for XLA.

So, for the duration of the import only, file descriptor 2 points at a temporary file; it is
then restored and what was written meanwhile goes back to stderr, except absl's 'before
InitializeLog' banner and C++ log lines of severity INFO, WARNING or ERROR (TensorFlow's CUDA
probing: it runs on the CPU here, see below). Everything else (Python warnings, FATAL lines,
anything not in the C++ log format) is written back. If the import fails, everything captured
is written back unfiltered and the exception propagates unchanged. With TF_CPP_MIN_LOG_LEVEL=0
nothing is captured.

TensorFlow is also kept off any GPU: JAX owns the accelerators.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# absl / glog line prefix: severity letter, MMDD, time (before absl's initialisation the seconds
# are since the epoch), thread id, file:line]
_CPP_LOG_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+\s+\d+ [^\]\s]+:\d+\] ")
_ABSL_BANNER = ("WARNING: All log messages before absl::InitializeLog() is called are written "
                "to STDERR")


def is_import_noise(line: str) -> bool:
    """A line TensorFlow's import writes that is dropped (INFO/WARNING/ERROR C++ logs, banner)."""
    return line.rstrip("\r\n") == _ABSL_BANNER or bool(_CPP_LOG_LINE.match(line))


def _hide_gpus(tf) -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were initialised before this module ran
        pass


def _write_stderr(text: str) -> None:
    if not text:
        return
    if sys.stderr is not None:
        sys.stderr.write(text)
        sys.stderr.flush()
    else:
        os.write(2, text.encode())


def _import_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0":  # asked to see everything
        import seqio
        import tensorflow as tf
        _hide_gpus(tf)
        return seqio, tf

    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import seqio
            import tensorflow as tf
            _hide_gpus(tf)
            failed = False
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()  # Python-level output written meanwhile lands in `captured`
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            if not failed:
                text = "".join(line for line in text.splitlines(keepends=True)
                               if not is_import_noise(line))
            _write_stderr(text)
    return seqio, tf


seqio, tf = _import_quietly()

__all__ = ["seqio", "tf", "is_import_noise"]
