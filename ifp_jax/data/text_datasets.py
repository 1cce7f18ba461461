"""Local TFDS and Hugging Face `datasets` corpora for continued pre-training (data.text_datasets).

`data.text_datasets` is a comma-separated list of sources, each `KIND:NAME[#SPLIT]` (SPLIT
defaults to 'train'):
  tfds:NAME[/CONFIG][:VERSION]  a TFDS dataset already prepared under data.tfds_data_dir (or
                                TFDS's default directory); nothing is downloaded
  hf:PATH                       a `datasets` dataset on local disk: a `save_to_disk` directory,
                                or a directory of data files `datasets.load_dataset` reads
  hf:ORG/NAME                   a Hub dataset already in the local `datasets` cache (read with
                                HF_HUB_OFFLINE=1 unless the caller set it otherwise)
Each source yields the string field data.text_field of every example of its split, streamed
(TFDS through tf.data, `datasets` from its memory-mapped Arrow files a batch at a time).
The held-out rule of text_files.py applies to the concatenation of all text sources.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterator

from ifp_jax.errors import DataError

KINDS = ("tfds", "hf")
_HF_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """One parsed item of data.text_datasets."""

    kind: str  # 'tfds' | 'hf'
    name: str  # TFDS name[/config][:version], or a local path / Hub id for 'hf'
    split: str = "train"

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}#{self.split}"


def parse_sources(spec: str) -> list[DatasetSource]:
    """The sources `spec` lists; a one-line DataError for an item that is not KIND:NAME[#SPLIT]."""
    sources = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        kind, sep, rest = item.partition(":")
        name, _, split = rest.partition("#")
        if not sep or kind not in KINDS or not name:
            raise DataError(f"data.text_datasets item {item!r} is not KIND:NAME[#SPLIT] with "
                            f"KIND one of {', '.join(KINDS)} (e.g. tfds:my_corpus:1.0.0 or "
                            f"hf:/data/my_corpus#train)")
        sources.append(DatasetSource(kind, name, split or "train"))
    return sources


# ----------------------------------------------------------------------------- TFDS

def _tfds_builder(source: DatasetSource, data_dir: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # a broken tfds install names its missing module here
        raise DataError(f"{source}: tensorflow_datasets cannot be imported ({e}); "
                        f"pip install tensorflow-datasets importlib_resources") from e
    try:
        builder = tfds.builder(source.name, data_dir=data_dir or None)
    except Exception as e:  # noqa: BLE001 - tfds raises many types for an unknown name
        raise DataError(f"{source}: no TFDS dataset {source.name!r} in "
                        f"{data_dir or 'the TFDS default data dir'} ({type(e).__name__}); "
                        f"prepare it there first or set data.tfds_data_dir") from e
    if not builder.is_prepared():
        raise DataError(f"{source}: TFDS dataset {source.name!r} is not prepared in "
                        f"{builder.data_dir}; nothing is downloaded here: run `tfds build` "
                        f"(or copy the prepared files) first")
    if source.split not in builder.info.splits:
        raise DataError(f"{source}: no split {source.split!r} (splits: "
                        f"{', '.join(sorted(builder.info.splits))})")
    return builder


def _tfds_identity(source: DatasetSource, data_dir: str) -> str:
    builder = _tfds_builder(source, data_dir)
    files = sorted(os.listdir(builder.data_dir))
    sizes = [os.path.getsize(os.path.join(builder.data_dir, f)) for f in files]
    return json.dumps([builder.info.full_name, str(builder.data_dir), source.split,
                       builder.info.splits[source.split].num_examples, files, sizes])


def _tfds_texts(source: DatasetSource, data_dir: str, field: str) -> Iterator[object]:
    builder = _tfds_builder(source, data_dir)
    if field not in builder.info.features:
        raise DataError(f"{source}: no feature {field!r} (features: "
                        f"{', '.join(builder.info.features)}); set data.text_field")
    dataset = builder.as_dataset(split=source.split, shuffle_files=False)
    for example in dataset.as_numpy_iterator():
        yield example[field]


# ----------------------------------------------------------------------------- Hugging Face

def _hf_dataset(source: DatasetSource):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local only: never reach the Hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{source}: the `datasets` package is not installed; "
                        f"pip install datasets") from e
    path = source.name
    saved = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in
                                        ("dataset_dict.json", "state.json"))
    try:
        if saved:
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise DataError(f"{source}: no split {source.split!r} (splits: "
                                    f"{', '.join(sorted(loaded))})")
                loaded = loaded[source.split]
            return loaded
        return datasets.load_dataset(path, split=source.split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - `datasets` raises many types for a missing dataset
        raise DataError(f"{source}: `datasets` cannot read {path!r} locally "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); give a "
                        f"save_to_disk directory, a directory of data files, or a dataset "
                        f"already in the local cache") from e


def _hf_identity(source: DatasetSource, data_dir: str) -> str:
    del data_dir
    dataset = _hf_dataset(source)
    return json.dumps([str(source), dataset._fingerprint, dataset.num_rows])  # noqa: SLF001


def _hf_texts(source: DatasetSource, data_dir: str, field: str) -> Iterator[object]:
    del data_dir
    dataset = _hf_dataset(source)
    if field not in dataset.column_names:
        raise DataError(f"{source}: no column {field!r} (columns: "
                        f"{', '.join(dataset.column_names)}); set data.text_field")
    for batch in dataset.select_columns([field]).iter(batch_size=_HF_BATCH):
        yield from batch[field]


_IDENTITY: dict[str, Callable[[DatasetSource, str], str]] = {
    "tfds": _tfds_identity, "hf": _hf_identity}
_TEXTS: dict[str, Callable[[DatasetSource, str, str], Iterator[object]]] = {
    "tfds": _tfds_texts, "hf": _hf_texts}


def identity(source: DatasetSource, data_dir: str) -> str:
    """A string that changes when the source's content does (keys registration and the prepared
    fingerprint); reading it also checks the source exists locally (one-line DataError if not)."""
    return _IDENTITY[source.kind](source, data_dir)


def raw_texts(source: DatasetSource, data_dir: str, field: str) -> Iterator[object]:
    """The `field` values of the source's split in stored order (str or bytes, unchecked)."""
    return _TEXTS[source.kind](source, data_dir, field)
