"""Prepared data on disk (`ifp data prepare`): reading it back, and the record format.

Light on purpose (numpy, grain, array_record; no TensorFlow or JAX), since grain's worker
processes import it to assemble batches.

Layout of a prepared directory (written by data/prepare.py):
  DIR/manifest.json            {"format", "fingerprint": {...}, "tasks": {task: {split:
                                 {"examples": n, "files": [relative paths, part-major]}}}}
  DIR/<task>/<split>/part<p>of<n>-<f>.array_record   ArrayRecord files, one record per example
  DIR/<task>/<split>/part<p>of<n>.json               a finished part (resumable preparation)

A record is one example in the batch contract (data/pipeline.py), as little-endian int32:
  [predictor_tokens (P) | decoder_target_tokens (T) | loss_start, loss_end, predictor_truncated,
   decoder_truncated, first_input]
decoder_loss_weights is 1 on [loss_start, loss_end) and decoder_input_tokens is first_input (the
decoder's start: 0, a BOS, or the prompt's first token; vocab/decoder_prefix.py) followed by the
targets shifted right by one, so every contract array is recovered exactly, and a batch decodes
in one reshape. Format v1 (no first_input: always 0) is still read.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ifp_jax.errors import DataError
from ifp_jax.safe_names import inside
from ifp_jax.storage import paths, staging

FORMAT = "ifp-contract-int32-v2"
# Record tail length per readable format (v1 lacks first_input: its decoder start was 0).
_TAILS = {"ifp-contract-int32-v1": 4, FORMAT: 5}
MANIFEST = "manifest.json"


def record_width(predictor_len: int, seq_len: int, fmt: str = FORMAT) -> int:
    return predictor_len + seq_len + _TAILS[fmt]


def encode_rows(contract: dict[str, np.ndarray]) -> np.ndarray:
    """Contract arrays of n examples -> [n, P + T + 4] int32 records (see the module doc)."""
    weights = contract["decoder_loss_weights"] > 0
    t = weights.shape[1]
    any_loss = weights.any(1)
    start = np.where(any_loss, weights.argmax(1), 0)
    end = np.where(any_loss, t - weights[:, ::-1].argmax(1), 0)
    contiguous = (weights.sum(1) == end - start)
    if not contiguous.all():
        raise DataError("an example's loss positions are not one contiguous span; the prepared "
                        "format cannot hold it")
    tail = np.stack([start, end, contract["predictor_truncated"],
                     contract["decoder_truncated"], contract["decoder_input_tokens"][:, 0]],
                    axis=1)
    return np.concatenate([contract["predictor_tokens"], contract["decoder_target_tokens"],
                           tail], axis=1).astype("<i4")


def decode_rows(rows: np.ndarray, predictor_len: int, seq_len: int) -> dict[str, np.ndarray]:
    """[n, P + T + 5] int32 records (v1: P + T + 4) -> the contract arrays (without task_id)."""
    p, t = predictor_len, seq_len
    targets = rows[:, p:p + t].astype(np.int32)
    start, end = rows[:, p + t], rows[:, p + t + 1]
    positions = np.arange(t)
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    if rows.shape[1] == record_width(p, t):  # v2 holds the decoder's first input
        inputs[:, 0] = rows[:, p + t + 4]
    return {"predictor_tokens": rows[:, :p].astype(np.int32),
            "decoder_input_tokens": inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": ((positions >= start[:, None]) &
                                     (positions < end[:, None])).astype(np.float32),
            "predictor_truncated": rows[:, p + t + 2].astype(np.int32),
            "decoder_truncated": rows[:, p + t + 3].astype(np.int32)}


def load_manifest(directory: str) -> dict:
    path = paths.join(directory, MANIFEST)
    if not paths.exists(path):
        raise DataError(f"{path} not found: prepare the data first with `ifp data prepare "
                        f"--out {directory}` (or finish the preparation that started there)")
    manifest = json.loads(paths.read_text(path))
    if manifest.get("format") not in _TAILS:
        raise DataError(f"{directory} holds prepared data of format {manifest.get('format')!r}, "
                        f"this version reads {', '.join(map(repr, _TAILS))}; prepare it again")
    return manifest


def check_fingerprint(directory: str, manifest: dict, expected: dict) -> None:
    """One-line DataError naming the first preprocessing choice that differs. The directory may
    hold more tasks than the config's mixture (e.g. a sub-mixture of what was prepared); each
    task the mixture needs must be there, prepared with its current settings."""
    stored = manifest["fingerprint"]
    fix = "prepare it again for this config (`ifp data prepare`) or use the config it was made for"
    for key in sorted(set(stored) | set(expected)):
        if key in ("tasks", "mixture", "decoder_prefix"):  # per task, below
            continue
        if stored.get(key) != expected.get(key):
            raise DataError(f"data.prepared_dir={directory} was prepared with {key}="
                            f"{stored.get(key)!r}, this config has {expected.get(key)!r}; {fix}")
    for task, settings in expected["tasks"].items():
        if task not in stored["tasks"]:
            raise DataError(f"data.prepared_dir={directory} has no task '{task}' (it holds "
                            f"mixture {stored.get('mixture')!r}); prepare a mixture with it")
        if stored["tasks"][task] != settings:
            was, now = first_difference(stored["tasks"][task], settings)
            raise DataError(f"data.prepared_dir={directory}: task '{task}' was prepared with "
                            f"{was}, this config has {now}; {fix}")
        # Absent: every task started from seqio's 0 (vocab/decoder_prefix.py SEQIO_START).
        was, now = (list(f.get("decoder_prefix", {}).get(task, [0])) for f in (stored, expected))
        if was != now:
            raise DataError(f"data.prepared_dir={directory}: task '{task}' was prepared with "
                            f"decoder prefix {was}, this config has {now}; {fix}")


def _parsed(value):
    """A task fingerprint holds JSON inside JSON strings: parse them to compare their parts."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def first_difference(stored, current, width: int = 160) -> tuple[str, str]:
    """The first differing part of two task fingerprints as 'path=value' strings. A list of
    plain values (a source file's [path, mtime, size]) is shown whole, for context."""
    path, was, now = _difference(stored, current)
    name = f"{path}=" if path else ""
    return name + _short(was, width), name + _short(now, width)


def _difference(stored, current) -> tuple[str, object, object]:
    stored, current = _parsed(stored), _parsed(current)
    nested = (list, dict)
    if isinstance(stored, list) and isinstance(current, list) and (
            any(isinstance(_parsed(x), nested) for x in stored + current)):
        for a, b in zip(stored, current):
            if a != b:
                return _difference(a, b)
        return "entries", len(stored), len(current)
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            if stored.get(key) != current.get(key):
                path, was, now = _difference(stored.get(key), current.get(key))
                return (f"{key}.{path}" if path else key), was, now
    return "", stored, current


def _short(value, width: int) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[:width // 2 - 2] + " .. " + text[-width // 2:]


class PreparedSplit:
    """One task's split on disk: `len()` examples, `read(indices)` -> contract arrays.

    Every file's size is checked against the manifest when the split opens: a truncated or
    missing file stops with its name, or with bad_files='skip' is left out (its examples are
    not drawn; `skipped_files` names it). Records damaged inside a file of the right size fail
    the reader's own checksums when read, reported with the split's files. The ArrayRecord
    readers open on first use, so the object pickles into grain workers.
    """

    def __init__(self, directory: str, task: str, split: str, predictor_len: int, seq_len: int,
                 manifest: dict, bad_files: str = "stop"):
        entry = manifest["tasks"].get(task, {}).get(split)
        if entry is None:
            raise DataError(f"data.prepared_dir={directory} has no '{split}' split of task "
                            f"'{task}'; prepare the mixture that contains it")
        self.paths, self.examples, self.skipped_files = [], 0, []
        for name, count, size in zip(entry["files"], entry["file_examples"], entry["bytes"]):
            # A copied or downloaded manifest must not send the reader outside the directory.
            path = paths.join(directory, inside(name, f"{directory}/{MANIFEST} file",
                                                DataError))
            actual = paths.size(path) if paths.exists(path) else None
            if actual == size:
                self.paths.append(path)
                self.examples += count
                continue
            problem = "is missing" if actual is None else f"has {actual} bytes, not {size}"
            if bad_files == "stop":
                raise DataError(f"prepared file {path} {problem} (truncated or changed); "
                                f"prepare the data again, or set data.bad_files=skip to train "
                                f"without it")
            self.skipped_files.append(f"{path} ({problem})")
        if not self.paths:
            raise DataError(f"every prepared file of '{task}' {split} is damaged or missing; "
                            f"prepare the data again")
        self.predictor_len, self.seq_len = predictor_len, seq_len
        self.format = manifest["format"]
        self._source = None

    def __len__(self) -> int:
        return self.examples

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Contract arrays of the examples at `indices` (any order, repeats allowed)."""
        if self._source is None:
            from grain.python import ArrayRecordDataSource
            missing = [p for p in self.paths if not paths.exists(p)]
            if missing:
                raise DataError(f"prepared file {missing[0]} is missing; prepare the data again")
            # ArrayRecord reads local files only: a bucket's files are fetched once per host
            # (cached; sizes checked against the manifest when the split opened).
            local = [staging.local_file(p) for p in self.paths]
            # The readers keep each file's chunk offsets in memory (8 bytes per example, about
            # 0.5% of the example itself): keeping them on disk instead
            # (index_storage_option:offloaded) made each random read 200x slower here.
            self._source = ArrayRecordDataSource(local)
        try:
            records = self._source.__getitems__([int(i) for i in indices])
        except Exception as e:  # riegeli reports corruption as various errors
            raise DataError(f"reading prepared data under {os.path.dirname(self.paths[0])} "
                            f"failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                            f"the files are damaged: prepare the data again") from e
        width = record_width(self.predictor_len, self.seq_len, self.format)
        blob = b"".join(records)
        if len(blob) != 4 * width * len(records):
            raise DataError(f"a record of {self.paths[0]}... has the wrong size (expected "
                            f"{4 * width} bytes): the prepared data is damaged or from another "
                            f"format; prepare it again")
        rows = np.frombuffer(blob, "<i4").reshape(len(records), width)
        return decode_rows(rows, self.predictor_len, self.seq_len)


class InMemorySplit:
    """The same interface over contract arrays already in memory."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["decoder_target_tokens"])

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}
