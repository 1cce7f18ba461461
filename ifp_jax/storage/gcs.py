"""Cloud Storage clients for `gs://` paths: one set of environment variables, one preflight.

Three clients reach a bucket: gcsfs (behind etils.epath: config, metrics, checksums, data, orbax's
metadata files), tensorstore (orbax's arrays) and google-cloud-storage (TensorBoard via
tensorboardX, the workdir lock's preconditions, the preflight). `configure_environment` points
all of them at one endpoint: `STORAGE_EMULATOR_HOST` (the standard variable, e.g. a
fake-gcs-server at http://127.0.0.1:4443) also sets tensorstore's `TENSORSTORE_GCS_HTTP_URL`.
It runs when `ifp_jax` is imported, before any client is.

`check_bucket` asks the bucket once, without retries and with a short timeout, so an unreachable
endpoint, a missing bucket or refused credentials is one line within seconds, before anything is
written anywhere.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from ifp_jax.errors import StorageError

EMULATOR = "STORAGE_EMULATOR_HOST"
PROBE_TIMEOUT_S = 10.0



def configure_environment() -> None:
    """Environment every GCS client reads; only fills in what the user has not set."""
    # epath would pick TensorFlow's gfile for gs:// whenever TF is installed (seqio brings it);
    # gfile ignores STORAGE_EMULATOR_HOST and is a second GCS stack next to orbax's. gcsfs it is.
    os.environ.setdefault("EPATH_USE_TF", "false")
    # gcsfs caches directory listings forever by default: a step another process (or orbax,
    # through tensorstore) wrote after the first listing would stay invisible.
    no_listing_cache = {"use_listings_cache": False}
    os.environ.setdefault("FSSPEC_GS", json.dumps(no_listing_cache))
    if "fsspec" in sys.modules:  # imported before us: its config was read already
        sys.modules["fsspec"].config.conf.setdefault("gs", {}).update(no_listing_cache)
    emulator = os.environ.get(EMULATOR)
    if emulator:
        url = emulator if "://" in emulator else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        # gcsfs's probe for zonal/hierarchical buckets speaks gRPC, which an emulator does not:
        # each probe would wait 60 s before falling back to the plain JSON API.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def split(url: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = url[len("gs://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def client():
    """A google-cloud-storage client: anonymous against an emulator, else the default
    credentials (`gcloud auth application-default login`, or the VM's service account)."""
    from google.cloud import storage
    if os.environ.get(EMULATOR):
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(credentials=AnonymousCredentials(), project="emulator")
    return storage.Client()


def _endpoint() -> str:
    return os.environ.get(EMULATOR) or "storage.googleapis.com"


def check_bucket(url: str, *, write: bool = True) -> None:
    """Reads the bucket of `url` (and with `write`, creates and deletes a probe object under
    it); StorageError in one line when that fails. No retries: seconds, not minutes."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    bucket_name, key = split(url)
    where = f"gs://{bucket_name}"
    try:
        storage = client()
        bucket = storage.bucket(bucket_name)
        # Listing (storage.objects.list) rather than bucket.exists (storage.buckets.get): the
        # usual grant, roles/storage.objectUser, has the first and not the second.
        try:
            list(storage.list_blobs(bucket_name, prefix=key, max_results=1,
                                     timeout=PROBE_TIMEOUT_S, retry=None))
        except api.NotFound:
            raise StorageError(f"bucket {where} does not exist (endpoint {_endpoint()}); create "
                               f"it (gcloud storage buckets create {where}) or fix the path"
                               ) from None
        if write:
            probe = bucket.blob(f"{key}/.ifp_write_probe.{socket.gethostname()}.{os.getpid()}"
                                .lstrip("/"))
            probe.upload_from_string(str(time.time()), timeout=PROBE_TIMEOUT_S, retry=None)
            probe.delete(timeout=PROBE_TIMEOUT_S, retry=None)
    except StorageError:
        raise
    except auth.DefaultCredentialsError:
        raise StorageError(f"no Google Cloud credentials to reach {where}; run `gcloud auth "
                           f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
                           ) from None
    except (api.Forbidden, api.Unauthorized) as e:
        raise StorageError(f"access to {where} was refused ({e.code}: {_first_line(e)}); grant "
                           f"these credentials roles/storage.objectUser on the bucket, or use "
                           f"another one") from None
    except api.GoogleAPIError as e:
        raise StorageError(f"bucket {where} cannot be used ({type(e).__name__}: "
                           f"{_first_line(e)}); check the path and the credentials") from None
    except (OSError, ConnectionError) as e:  # requests' ConnectionError is an OSError
        raise StorageError(f"cannot reach Cloud Storage at {_endpoint()} for {where} "
                           f"({type(e).__name__}); check the network (or {EMULATOR})") from None


def _first_line(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e)
    return text.splitlines()[0][:160] if text else type(e).__name__
