"""Where runs, data and exports live: a local disk or Cloud Storage (`gs://bucket/path`).

`paths` is the one path layer every reader and writer of a workdir, prepared data or an export
goes through (etils.epath: the layer orbax and grain use themselves, with gcsfs behind `gs://`);
`gcs` sets the clients up (emulator, credentials) and checks a bucket before a job starts;
`object_lock` is the one-job-per-workdir lock on an object store; `staging` moves whole
directories that third-party writers (safetensors, tokenizers, GGUF) can only write locally.
"""
