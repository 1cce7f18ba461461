"""CPT over local text files (data.text_files): the document rules of each format, the held-out
rule, bad lines, and preparation of a generated corpus streamed through SeqIO."""

import dataclasses
import json

import numpy as np
import pytest

from ifp_jax.config import DataConfig
from ifp_jax.data import pipeline, prepared, tasks, text_files
from ifp_jax.data.corpus import generate_corpus
from ifp_jax.errors import DataError
from ifp_jax.data.prepare import prepare


def test_each_format_yields_its_documents_and_every_20th_is_held_out(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n\ntwo\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}"})
                                                for i in range(40)) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["p0", "p1"]}), str(tmp_path / "c.parquet"))
    (tmp_path / "ignored.csv").write_text("x")
    files = text_files.resolve_files(str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.jsonl", "c.parquet"]
    train = list(text_files.documents(files, "train"))
    held = list(text_files.documents(files, "validation"))
    everything = ["one\nstill one\n", "two\n"] + [f"doc {i}" for i in range(40)] + ["p0", "p1"]
    assert held == [everything[19], everything[39]]
    assert train == [d for i, d in enumerate(everything) if i % 20 != 19]


def test_a_bad_line_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\n\xff\xfe not utf-8\nmore\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not UTF-8.*skip_bad_lines"):
        list(text_files.documents([str(path)], "train"))
    before = text_files.skipped_lines()
    assert list(text_files.documents([str(path)], "train", skip_bad=True)) == ["good\nmore\n"]
    assert text_files.skipped_lines() == before + 1
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*\"text\""):
        list(text_files.documents([str(jsonl)], "train"))
    with pytest.raises(DataError, match="does not exist"):
        text_files.resolve_files(str(tmp_path / "nope.txt"))


def test_a_generated_corpus_prepares_to_the_in_memory_examples(tmp_path):
    files = generate_corpus(str(tmp_path / "corpus"), 300_000, file_bytes=100_000)
    assert len(files) == 3
    again = generate_corpus(str(tmp_path / "corpus"), 300_000, file_bytes=100_000)
    assert again == files  # complete files are reused
    cfg = DataConfig(mixture=tasks.TEXT_FILES_TASK, text_files=str(tmp_path / "corpus"),
                     seq_len=48, cpt_chunk_len=16, cpt_num_chunks=3, global_batch_size=8)
    manifest = prepare(cfg, 16, str(tmp_path / "prepared"), log=lambda m: None)
    split = prepared.PreparedSplit(str(tmp_path / "prepared"), tasks.TEXT_FILES_TASK, "train",
                                   16, 48, manifest)
    memory = pipeline.to_contract(pipeline.tokenized_examples(tasks.TEXT_FILES_TASK, "train"),
                                  16, 48, (0,))
    assert len(split) == len(memory["decoder_target_tokens"]) > 10_000
    disk = split.read(np.arange(len(split)))
    for key in disk:
        np.testing.assert_array_equal(disk[key], memory[key], err_msg=key)
    # CPT example k: the predictor reads chunk k, the loss is on chunk k + 1 only.
    assert disk["decoder_loss_weights"].sum(1).tolist() == [16.0] * len(split)
    # Training refuses the directory once a choice or a source file changes, naming which.
    on_disk = dataclasses.replace(cfg, prepared_dir=str(tmp_path / "prepared"))
    with pytest.raises(DataError, match=r"task 'ifp_text' was prepared with cpt_chunk_len=16, "
                                        r"this config has cpt_chunk_len=12"):
        pipeline.make_train_batches(dataclasses.replace(on_disk, cpt_chunk_len=12), 16)
    with open(files[1], "a") as f:
        f.write("one more document\n")
    with pytest.raises(DataError, match=r"source.files=\[\".*corpus-00001.txt\", \d+, \d+\]"):
        pipeline.make_train_batches(on_disk, 16)


_STREAM = """
import json, os, sys
from ifp_jax.data.pipeline import make_train_batches
from ifp_jax.data.prepared import record_width
from ifp_jax.config import DataConfig


def anon_mib():
    with open(f"/proc/{os.getpid()}/status") as f:
        return int(f.read().split("RssAnon:")[1].split()[0]) / 1024


cfg = DataConfig(mixture="ifp_text", text_files=sys.argv[1], seq_len=48, cpt_chunk_len=16,
                 cpt_num_chunks=3, global_batch_size=512, prepared_dir=sys.argv[2])
batches = make_train_batches(cfg, 16)
epoch = int(sys.argv[3])
for _ in range(epoch):  # warm-up: one epoch (readers opened, allocator settled)
    next(batches)
start = peak = anon_mib()
for _ in range(epoch):
    next(batches)
    peak = max(peak, anon_mib())
print(json.dumps({"start": start, "peak": peak,
                  "streamed_mib": epoch * 512 * record_width(16, 48) * 4 / 2**20}))
"""


def test_streaming_prepared_data_keeps_host_memory_flat(tmp_path):
    """Host memory is the process's anonymous resident set (RssAnon in /proc/PID/status: the
    page cache of the files read is not the process's), measured after one warm-up epoch and
    at its peak during a second epoch of a prepared corpus: it must grow by less than a
    10 MiB budget while the examples streamed (as int32 records) are over 5x that."""
    import subprocess
    import sys
    corpus = str(tmp_path / "corpus")
    generate_corpus(corpus, 6_000_000, file_bytes=2_000_000)
    cfg = DataConfig(mixture=tasks.TEXT_FILES_TASK, text_files=corpus, seq_len=48,
                     cpt_chunk_len=16, cpt_num_chunks=3, global_batch_size=512)
    manifest = prepare(cfg, 16, str(tmp_path / "prepared"), log=lambda m: None)
    epoch = manifest["tasks"][tasks.TEXT_FILES_TASK]["train"]["examples"] // 512 + 1
    out = subprocess.run([sys.executable, "-c", _STREAM, corpus, str(tmp_path / "prepared"),
                          str(epoch)], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    budget = 10.0
    assert figures["streamed_mib"] > 5 * budget, figures
    assert figures["peak"] - figures["start"] < budget, figures


def test_text_files_in_a_bucket_read_like_local_ones(bucket, tmp_path):
    from ifp_jax.storage import paths
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n')
    for name in ("a.txt", "b.jsonl"):
        paths.write_atomic(f"{bucket}/corpus/{name}", (tmp_path / name).read_bytes())
    remote = text_files.resolve_files(f"{bucket}/corpus/*")
    assert remote == [f"{bucket}/corpus/a.txt", f"{bucket}/corpus/b.jsonl"]
    assert text_files.resolve_files(f"{bucket}/corpus") == remote  # a directory
    local = text_files.resolve_files(str(tmp_path))
    for split in ("train", "validation"):
        assert list(text_files.documents(remote, split)) == \
               list(text_files.documents(local, split))
    assert list(text_files.documents(remote, "train"))  # not trivially equal
