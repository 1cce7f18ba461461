"""What an `ifp train` workdir holds: one place for its file names.

    DIR/config.json              the resolved ExperimentConfig (written once, checked on resume)
    DIR/checkpoints/<step>/      orbax checkpoints (state + data position)
    DIR/checksums/               CRC32C of every checkpoint file, checked before a restore
    DIR/metrics.jsonl            one JSON object per logged step (and per evaluation)
    DIR/.lock                    held by process 0 while a job runs (one job per workdir; in a
                                 bucket a lock object, storage/object_lock.py)
    DIR/eval_<mask>_<eval mask>[_<split>].json, DIR/masks_<...>/   `ifp eval` results
    DIR/tb/                      TensorBoard event files

Writers (train loop, checkpoints, evaluation) and readers (runs.open_run, export, generate)
take the names from here. No imports: config.py and the training core both use it.
"""

from __future__ import annotations

import os

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
CHECKSUMS = "checksums"
TENSORBOARD = "tb"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, METRICS_FILE)
