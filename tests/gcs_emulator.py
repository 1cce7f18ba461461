"""fake-gcs-server (the standard GCS emulator, a real JSON/XML API on 127.0.0.1) for gs:// tests.

Every client the project uses reads STORAGE_EMULATOR_HOST (tensorstore through the variable
ifp_jax sets from it), so commands run in subprocesses with `gcs_emulator.env` reach it as they
would reach Cloud Storage; this process's clients reach it too (the variables are set here).
"""

from __future__ import annotations

import os
import uuid

import pytest

from ifp_jax.storage.emulator import Emulator


class RunningEmulator:
    def __init__(self, emulator: Emulator):
        self.emulator = emulator
        self.url = emulator.url
        self.env = {**os.environ, **emulator.env}

    def new_bucket(self) -> str:
        """A fresh bucket; returns its gs:// URL."""
        return self.emulator.create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def gcs_emulator():
    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield RunningEmulator(emulator)
    finally:
        emulator.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(gcs_emulator) -> str:
    return gcs_emulator.new_bucket()
