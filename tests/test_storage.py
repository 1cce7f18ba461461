"""The path layer and the workdir lock against a real GCS API (fake-gcs-server on 127.0.0.1)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ifp_jax.errors import StorageError
from ifp_jax.storage import gcs, paths
from ifp_jax.storage.object_lock import ObjectLock


def test_files_round_trip_through_the_bucket_like_a_local_dir(bucket, tmp_path):
    root = f"{bucket}/run"
    paths.write_atomic(f"{root}/a/x.json", '{"k": 1}')
    paths.write_atomic(f"{root}/b.txt", b"hello")
    assert sorted(paths.listdir(root)) == ["a", "b.txt"]
    assert paths.isdir(f"{root}/a") and paths.isfile(f"{root}/b.txt")
    assert not paths.exists(f"{root}/missing") and paths.listdir(f"{root}/missing") == []
    assert paths.size(f"{root}/b.txt") == 5 and paths.read_text(f"{root}/a/x.json") == '{"k": 1}'
    assert sorted(paths.walk_files(root)) == ["a/x.json", "b.txt"]
    assert paths.glob(f"{root}/*/*.json") == [f"{root}/a/x.json"]
    assert paths.absolute(root + "/") == root  # not /cwd/gs:/...
    paths.copy_tree(root, str(tmp_path / "local"))
    assert (tmp_path / "local" / "a" / "x.json").read_text() == '{"k": 1}'
    paths.copy_tree(str(tmp_path / "local"), f"{bucket}/copy")
    assert sorted(paths.walk_files(f"{bucket}/copy")) == ["a/x.json", "b.txt"]
    paths.rmtree(f"{bucket}/copy")
    assert not paths.exists(f"{bucket}/copy")


def test_a_listing_sees_objects_written_after_an_earlier_listing(bucket):
    """gcsfs caches listings by default; a checkpoint step written by another process (or by
    tensorstore) after the first listing must still be found."""
    paths.write_atomic(f"{bucket}/ck/1/x", b"1")
    assert paths.listdir(f"{bucket}/ck") == ["1"]
    gcs.client().bucket(bucket[5:]).blob("ck/2/x").upload_from_string(b"2")
    assert sorted(paths.listdir(f"{bucket}/ck")) == ["1", "2"]


def test_the_lock_admits_one_job_and_names_the_holder(bucket):
    first = ObjectLock(f"{bucket}/run/.lock", stale_after_s=600)
    assert first.acquire() == ""
    second = ObjectLock(f"{bucket}/run/.lock", stale_after_s=600)
    reason = second.acquire()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in reason
    assert "wait for it to end or use another --workdir" in reason and "\n" not in reason
    first.release()
    assert second.acquire() == ""  # released: free again
    second.release()


def _plant_holder(bucket: str, record: dict) -> None:
    gcs.client().bucket(bucket[5:]).blob("run/.lock").upload_from_string(json.dumps(record))


def test_a_stale_lock_is_taken_over_and_its_old_holder_learns_it(bucket):
    _plant_holder(bucket, {"host": "gone-host", "pid": 1, "time": time.time() - 120})
    assert "in use" in ObjectLock(f"{bucket}/run/.lock", stale_after_s=600).acquire()
    taker = ObjectLock(f"{bucket}/run/.lock", stale_after_s=60)  # 120 s old: stale for it
    assert taker.acquire() == ""
    holder = json.loads(paths.read_text(f"{bucket}/run/.lock"))
    assert holder["pid"] == os.getpid()
    # Another job replaces it (as if we had been thought dead): our renewal notices.
    victim = ObjectLock(f"{bucket}/run/.lock", stale_after_s=4)
    taker.release()
    assert victim.acquire() == ""
    _plant_holder(bucket, {"host": "other", "pid": 2, "time": time.time()})
    deadline = time.time() + 10
    while not victim.lost and time.time() < deadline:
        time.sleep(0.2)
    assert victim.lost
    victim.release()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(bucket):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    _plant_holder(bucket, {"host": socket.gethostname(), "pid": int(dead), "time": time.time()})
    lock = ObjectLock(f"{bucket}/run/.lock", stale_after_s=600)
    assert lock.acquire() == ""
    lock.release()


def test_a_missing_bucket_is_one_line(gcs_emulator):
    with pytest.raises(StorageError, match=r"bucket gs://no-such-bucket does not exist .*create it"):
        gcs.check_bucket("gs://no-such-bucket/run")


def test_an_unreachable_endpoint_is_one_line_within_seconds(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    start = time.time()
    with pytest.raises(StorageError, match=r"cannot reach Cloud Storage at http://127.0.0.1:9"):
        gcs.check_bucket("gs://any/run")
    assert time.time() - start < 15
