"""Local text corpora for continued pre-training (data.text_files), streamed document by document.

`data.text_files` is a comma-separated list of files, directories or glob patterns, read in
sorted path order:
  *.txt      documents separated by blank lines (a file without blank lines is one document;
             documents are cut at MAX_DOC_CHARS so a single huge line never fills memory)
  *.jsonl    one document per line, its data.text_field ("text") field
  *.parquet  one document per row of its data.text_field column (pyarrow, one row group at a time)
Local TFDS / Hugging Face datasets (data.text_datasets, text_datasets.py) follow the files.
Document i (0-based, over all sources) is held out for 'validation' iff i % 20 == 19.

A line that is not UTF-8 (or a JSONL line that is not an object with a string "text") is a
one-line DataError naming file:line, or, with data.skip_bad_lines=true, skipped and counted
(`skipped_lines()`; `ifp data prepare` reports the count).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

from ifp_jax.data import text_datasets
from ifp_jax.errors import DataError
from ifp_jax.storage import paths

SUFFIXES = (".txt", ".jsonl", ".parquet")
HELD_OUT_EVERY = 20
MAX_DOC_CHARS = 1_000_000
_SKIPPED = {"lines": 0}


def resolve_files(spec: str) -> list[str]:
    """The files `spec` names (see the module doc), sorted; a one-line DataError if none."""
    files: set[str] = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if paths.isdir(item):
            matches = [paths.join(item, f) for f in paths.listdir(item)]
        else:
            matches = paths.glob(item)
            if not matches and not glob.has_magic(item):
                raise DataError(f"data.text_files: {item} does not exist")
        files.update(m if paths.is_remote(m) else os.path.realpath(m) for m in matches
                     if m.endswith(SUFFIXES) and paths.isfile(m))
    if not files:
        raise DataError(f"data.text_files={spec!r} names no {'/'.join(SUFFIXES)} files")
    return sorted(files)


def skipped_lines() -> int:
    return _SKIPPED["lines"]


def _bad(path: str, line: int, why: str, skip: bool) -> None:
    if not skip:
        raise DataError(f"{path}:{line}: {why}; fix or remove it (or set "
                        f"data.skip_bad_lines=true to skip such lines, counted)")
    _SKIPPED["lines"] += 1


def _txt_documents(path: str, skip_bad: bool, field: str) -> Iterator[str]:
    del field  # a .txt file has no fields
    parts: list[str] = []
    size = 0
    with paths.open_file(path, "rb") as f:  # gs:// files stream in blocks
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad(path, number, "not UTF-8", skip_bad)
                continue
            if not line.strip():
                if parts:
                    yield "".join(parts)
                parts, size = [], 0
                continue
            parts.append(line)
            size += len(line)
            if size >= MAX_DOC_CHARS:
                yield "".join(parts)
                parts, size = [], 0
    if parts:
        yield "".join(parts)


def _jsonl_documents(path: str, skip_bad: bool, field: str) -> Iterator[str]:
    with paths.open_file(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                _bad(path, number, f"not a UTF-8 JSON line ({type(e).__name__})", skip_bad)
                continue
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                _bad(path, number, f'expected an object with a string "{field}" field',
                     skip_bad)
                continue
            yield record[field]


def _parquet_documents(path: str, skip_bad: bool, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq
    # A seekable file object: a gs:// file is read by byte ranges, one row group at a time.
    reader = pq.ParquetFile(paths.open_file(path, "rb") if paths.is_remote(path) else path)
    if field not in reader.schema_arrow.names:
        raise DataError(f"{path} has no '{field}' column (columns: "
                        f"{', '.join(reader.schema_arrow.names)}); set data.text_field")
    for group in range(reader.num_row_groups):
        for text in reader.read_row_group(group, columns=[field]).column(field).to_pylist():
            if isinstance(text, str):
                yield text
            else:
                _bad(path, group, f"a null or non-string '{field}' value in this row group",
                     skip_bad)


_READERS = {".txt": _txt_documents, ".jsonl": _jsonl_documents,
            ".parquet": _parquet_documents}


def _dataset_documents(source: text_datasets.DatasetSource, data_dir: str, field: str,
                       skip_bad: bool) -> Iterator[str]:
    for number, value in enumerate(text_datasets.raw_texts(source, data_dir, field), 1):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                _bad(str(source), number, f"example {number}'s {field!r} is not UTF-8",
                     skip_bad)
                continue
        if not isinstance(value, str):
            _bad(str(source), number, f"example {number}'s {field!r} is not a string",
                 skip_bad)
            continue
        yield value


def documents(files: list[str], split: str, skip_bad: bool = False, field: str = "text",
              sources: tuple = (), tfds_data_dir: str = "") -> Iterator[str]:
    """The documents of `split` ('train' or 'validation') of `files` then of the dataset
    `sources` (text_datasets.DatasetSource), streamed."""
    streams = [_READERS[os.path.splitext(path)[1]](path, skip_bad, field) for path in files]
    streams += [_dataset_documents(s, tfds_data_dir, field, skip_bad) for s in sources]
    index = 0
    for stream in streams:
        for doc in stream:
            if (index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "validation"):
                yield doc
            index += 1
