"""Test setup: 8 virtual CPU devices (set before JAX initialises) for sharding tests."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu is only used for topology descriptions (AOT compiles): no chip is claimed.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# `ifp train` turns on JAX's persistent compilation cache (train.compile_cache_dir, default
# ~/.cache): not from the suite's runs (tests/test_train_compile_cache.py turns it back on).
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

pytest_plugins = ("gcs_emulator",)  # the `gcs_emulator` and `bucket` fixtures
