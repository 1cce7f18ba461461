"""`ifp data prepare`: every task of a mixture preprocessed once by SeqIO (tokenisation, the CPT
chunk rule, prompt/response formatting, truncation to the batch contract) and written as
ArrayRecord files that training reads on demand (data/prepared.py has the layout and format).

ArrayRecord rather than seqio's cache: grain reads it natively with random access, which the
trainer needs (the batch at step s is a pure function of the config and s, so resume reads
exactly the rows it needs), and a record is a fixed-width int32 row of the batch contract, so a
batch decodes with one reshape. seqio's cache is TFRecord (sequential) and would still need
tokens turned into the contract per batch.

Resumable and parallel: process p of n prepares SeqIO's shard p of n of every task's splits
(disjoint and covering), in files of at most `examples_per_file` examples, each written under a
temporary name and renamed when complete; a rerun skips finished parts and files. The last
process to finish writes DIR/manifest.json. Examples are stored part after part (the order of
a single-process preparation when n = 1).
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Callable

import numpy as np

from ifp_jax.config import DataConfig
from ifp_jax.data import pipeline, prepared, tasks
from ifp_jax.errors import DataError
from ifp_jax.storage import paths, staging
from ifp_jax.tf_import import seqio
from ifp_jax.safe_names import plain_name

PLAN = "prepare.json"  # the fingerprint and process count a (partial) preparation was started with


def _part_name(index: int, count: int) -> str:
    return f"part{index:03d}of{count:03d}"


def _write_file(path: str, rows) -> None:
    """ArrayRecord file of int32 rows, complete or absent (written to .tmp, then renamed)."""
    from array_record.python.array_record_module import ArrayRecordWriter
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")  # one record per chunk: cheap random reads
    for row in rows:
        writer.write(row.tobytes())
    writer.close()
    os.replace(tmp, path)


def _prepare_part(out: str, task: str, split: str, *, index: int, count: int,
                  predictor_max_len: int, seq_len: int, prefix: tuple[int, ...],
                  examples_per_file: int,
                  log: Callable[[str], None]) -> dict:
    """Writes (or finishes) part `index` of `count` of one task's split; returns its record."""
    directory = os.path.join(out, task, split)
    os.makedirs(directory, exist_ok=True)
    part = _part_name(index, count)
    marker = os.path.join(directory, part + ".json")
    if os.path.exists(marker):
        with open(marker) as f:
            return json.load(f)
    # Resume after the files already written (complete by construction: renamed when closed).
    done = sorted(glob.glob(os.path.join(directory, part + "-*.array_record")))
    files = [os.path.relpath(p, out) for p in done]
    counts = [_num_records(p) for p in done]
    written = sum(counts)
    pending, t0, total = None, time.time(), written
    for batch in pipeline.tokenized_batches(task, split, (index, count), skip=written):
        rows = prepared.encode_rows(pipeline.to_contract(batch, predictor_max_len, seq_len,
                                                            prefix))
        pending = rows if pending is None else np.concatenate([pending, rows])
        while len(pending) >= examples_per_file:
            files.append(_flush(out, directory, part, len(files), pending[:examples_per_file]))
            counts.append(examples_per_file)
            pending = pending[examples_per_file:]
        total += len(rows)
        log(f"[ifp] {task}/{split} {part}: {total:,} examples "
            f"({(total - written) / max(time.time() - t0, 1e-9):,.0f}/s)")
    if pending is not None and len(pending):
        files.append(_flush(out, directory, part, len(files), pending))
        counts.append(len(pending))
    record = {"files": files, "examples": counts,
              "bytes": [os.path.getsize(os.path.join(out, f)) for f in files]}
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, marker)
    return record


def _num_records(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader
    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def _flush(out: str, directory: str, part: str, number: int, rows) -> str:
    path = os.path.join(directory, f"{part}-{number:05d}.array_record")
    _write_file(path, rows)
    return os.path.relpath(path, out)


def prepare(data_cfg: DataConfig, predictor_max_len: int, out: str, *, process_index: int = 0,
            process_count: int = 1, examples_per_file: int = 100_000,
            log: Callable[[str], None] = print) -> dict | None:
    """Prepares this process's parts of every task of data_cfg.mixture into `out`; returns the
    manifest once every part of every process is done (else None)."""
    if not 0 <= process_index < process_count:
        raise DataError(f"--process-index {process_index} must be in 0..{process_count - 1}")
    fp = tasks.mixture_fingerprint(data_cfg, predictor_max_len)
    names = list(fp["tasks"])
    splits = {name: list(seqio.get_mixture_or_task(name).splits) for name in names}
    _check_path_names(splits)
    plan = {"fingerprint": fp, "process_count": process_count,
            "examples_per_file": examples_per_file}
    out = paths.absolute(out)
    _check_or_write_plan(out, plan)
    # ArrayRecord writes local files: a gs:// output is prepared in a local directory that
    # persists (a rerun resumes there), then this process's parts are uploaded.
    local = staging.work_dir(out) if paths.is_remote(out) else out
    if local != out:
        _check_or_write_plan(local, plan)
    for name in names:
        for split in splits[name]:
            _prepare_part(local, name, split, index=process_index, count=process_count,
                          predictor_max_len=predictor_max_len, seq_len=data_cfg.seq_len,
                          prefix=tasks.task_decoder_prefix(name, data_cfg),
                          examples_per_file=examples_per_file, log=log)
            if local != out:
                _upload_part(local, out, name, split, _part_name(process_index, process_count))
    return _write_manifest_if_complete(out, fp, splits, process_count)


def _check_or_write_plan(out: str, plan: dict) -> None:
    paths.makedirs(out)
    plan_path = paths.join(out, PLAN)
    if paths.exists(plan_path):
        started = json.loads(paths.read_text(plan_path))
        if started != plan:
            key = next(k for k in plan if plan[k] != started.get(k))
            raise DataError(f"{out} holds a preparation started with another {key}; prepare "
                            f"into a new --out directory (nothing in {out} was changed)")
    else:
        paths.write_atomic(plan_path, json.dumps(plan, indent=1))


def _upload_part(local: str, out: str, name: str, split: str, part: str) -> None:
    """Uploads one finished part: its ArrayRecord files, then its marker (what readers and the
    manifest trust), unless the bucket has that marker already."""
    marker = paths.join(out, name, split, part + ".json")
    if paths.exists(marker):
        return
    directory = os.path.join(local, name, split)
    for file in sorted(os.listdir(directory)):
        if file.startswith(part + "-") and file.endswith(".array_record"):
            paths.write_atomic(paths.join(out, name, split, file),
                               paths.read_bytes(os.path.join(directory, file)))
    paths.write_atomic(marker, paths.read_bytes(os.path.join(directory, part + ".json")))


def _check_path_names(splits: dict[str, list[str]]) -> None:
    """Task and split names become OUT/<task>/<split>/: a SeqIO name may hold '..' (its names
    allow dots), so each is checked before anything is written."""
    for name, task_splits in splits.items():
        plain_name(name, "task name", DataError)
        for split in task_splits:
            plain_name(split, f"split name of task '{name}'", DataError)


def _write_manifest_if_complete(out: str, fp: dict, splits: dict, count: int) -> dict | None:
    entries: dict = {}
    for name, task_splits in splits.items():
        for split in task_splits:
            files, examples, sizes, per_file = [], 0, [], []
            for index in range(count):
                marker = paths.join(out, name, split, _part_name(index, count) + ".json")
                if not paths.exists(marker):
                    return None  # another process is still at work
                record = json.loads(paths.read_text(marker))
                files += record["files"]
                examples += sum(record["examples"])
                per_file += record["examples"]
                sizes += record["bytes"]
            entries.setdefault(name, {})[split] = {"examples": examples, "files": files,
                                                   "file_examples": per_file, "bytes": sizes}
    manifest = {"format": prepared.FORMAT, "fingerprint": fp, "tasks": entries}
    paths.write_atomic(paths.join(out, prepared.MANIFEST), json.dumps(manifest, indent=1))
    return manifest
