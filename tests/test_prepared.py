"""Prepared data (`ifp data prepare`, data.prepared_dir): the same batches as the in-memory path,
across processes of the preparation, with grain workers, after resume; refused when it does not
match the config."""

import json
import os

import numpy as np
import pytest

from ifp_jax.config import DataConfig, replace
from ifp_jax.data import pipeline, prepared
from ifp_jax.errors import DataError
from ifp_jax.data.prepare import prepare

P = 24
DATA = DataConfig(mixture="ifp_facts", seq_len=20, global_batch_size=32, seed=3,
                  predictor_instruction_rate=0.5)


def _assert_batches_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared"))
    manifest = prepare(DATA, P, out, examples_per_file=4000, log=lambda m: None)
    assert manifest is not None
    return out


def test_records_round_trip_the_batch_contract():
    memory = pipeline.make_train_batches(DATA, P).batch_at(0)
    rows = prepared.encode_rows(memory)
    assert rows.dtype == np.dtype("<i4") and rows.shape == (32, prepared.record_width(P, 20))
    back = prepared.decode_rows(rows, P, 20)
    for key in back:
        np.testing.assert_array_equal(back[key], memory[key], err_msg=key)


def test_prepared_batches_equal_the_in_memory_batches(prepared_dir):
    with open(os.path.join(prepared_dir, prepared.MANIFEST)) as f:
        manifest = json.load(f)
    counts = {t: s["train"]["examples"] for t, s in manifest["tasks"].items()}
    assert all(n == 10_000 for n in counts.values()) and len(counts) == 8
    # 10,000 examples in files of at most 4,000: three files per task's train split.
    assert all(len(s["train"]["files"]) == 3 for s in manifest["tasks"].values())
    memory = pipeline.make_train_batches(DATA, P)
    disk = pipeline.make_train_batches(replace(DATA, prepared_dir=prepared_dir), P)
    for step in (0, 1, 57, 10_000):
        _assert_batches_equal(disk.batch_at(step), memory.batch_at(step))
    # Each host's rows of a global batch, read from disk, are the in-memory host rows.
    host1 = pipeline.make_train_batches(replace(DATA, prepared_dir=prepared_dir), P, 1, 2)
    _assert_batches_equal(host1.batch_at(5), pipeline.make_train_batches(DATA, P, 1, 2)
                          .batch_at(5))


def test_workers_give_the_same_batches_and_resume_exactly(prepared_dir):
    cfg = replace(DATA, prepared_dir=prepared_dir, num_workers=2, prefetch=2)
    memory = pipeline.make_train_batches(DATA, P)
    workers = pipeline.make_train_batches(cfg, P)
    try:
        for step in range(4):
            _assert_batches_equal(next(workers), memory.batch_at(step))
        state = workers.get_state()
        resumed = pipeline.make_train_batches(cfg, P)
        resumed.set_state(state)
        try:
            for step in range(4, 7):
                _assert_batches_equal(next(resumed), memory.batch_at(step))
        finally:
            resumed.close()
    finally:
        workers.close()


def test_two_preparation_processes_cover_the_same_examples(prepared_dir, tmp_path):
    data = replace(DATA, mixture="ifp_fact_color")
    out = str(tmp_path / "two")
    assert prepare(data, P, out, process_index=0, process_count=2,
                   log=lambda m: None) is None  # waits for process 1
    manifest = prepare(data, P, out, process_index=1, process_count=2, log=lambda m: None)
    whole = prepared.PreparedSplit(prepared_dir, "ifp_fact_color", "train", P, 20,
                                   prepared.load_manifest(prepared_dir))
    halves = prepared.PreparedSplit(out, "ifp_fact_color", "train", P, 20, manifest)
    assert len(halves) == len(whole) == 10_000
    rows = lambda split: prepared.encode_rows(split.read(np.arange(len(split))))
    a, b = rows(whole), rows(halves)
    np.testing.assert_array_equal(a[np.lexsort(a.T)], b[np.lexsort(b.T)])


def test_an_interrupted_preparation_finishes_where_it_stopped(tmp_path):
    data = replace(DATA, mixture="ifp_fact_size")
    out = str(tmp_path / "resume")
    whole = prepare(data, P, out, examples_per_file=3000, log=lambda m: None)
    directory = os.path.join(out, "ifp_fact_size", "train")
    # As if killed after its second file: later files, the part marker and the manifest gone.
    os.remove(os.path.join(out, prepared.MANIFEST))
    os.remove(os.path.join(directory, "part000of001.json"))
    for name in ("part000of001-00002.array_record", "part000of001-00003.array_record"):
        os.remove(os.path.join(directory, name))
    again = prepare(data, P, out, examples_per_file=3000, log=lambda m: None)
    assert again == whole
    split = lambda m: prepared.PreparedSplit(out, "ifp_fact_size", "train", P, 20, m)
    assert len(split(again)) == 10_000


def test_a_mismatched_or_missing_preparation_is_refused(prepared_dir, tmp_path):
    with pytest.raises(DataError, match=r"seq_len=20, this config has 32"):
        pipeline.make_train_batches(replace(DATA, prepared_dir=prepared_dir, seq_len=32), P)
    with pytest.raises(DataError, match="predictor_max_len=24, this config has 16"):
        pipeline.make_train_batches(replace(DATA, prepared_dir=prepared_dir), 16)
    with pytest.raises(DataError, match="ifp data prepare"):
        pipeline.make_train_batches(replace(DATA, prepared_dir=str(tmp_path)), P)
    with pytest.raises(DataError, match="another fingerprint"):
        prepare(replace(DATA, seq_len=32), P, prepared_dir, log=lambda m: None)


def test_inspect_shows_counts_truncation_and_decoded_examples(prepared_dir):
    from ifp_jax.data.inspect import inspect
    for data in (DATA, replace(DATA, prepared_dir=prepared_dir)):
        text = inspect(replace(data, mixture="ifp_fact_king"), P, examples=1)
        assert "== ifp_fact_king: 10,000 examples, rate 1" in text
        assert "truncated of a sample of 10,000" not in text and "decoder 0, predictor 0" in text
        lines = text.splitlines()
        prompt = next(line for line in lines if "] prompt" in line)
        assert " of " in prompt and prompt.rstrip().endswith("='")
        mask = next(line for line in lines if "loss mask" in line).split()[-1]
        assert len(mask) == 20 and set(mask) == {".", "1"}
    with pytest.raises(DataError, match="has no task 'ifp_skill_add'"):
        inspect(replace(DATA, prepared_dir=prepared_dir, mixture="ifp_skill_add"), P)


def test_a_damaged_file_stops_with_its_name_or_is_skipped(tmp_path):
    data = replace(DATA, mixture="ifp_fact_tool")
    out = str(tmp_path / "damaged")
    manifest = prepare(data, P, out, examples_per_file=3000, log=lambda m: None)
    path = os.path.join(out, "ifp_fact_tool", "train", "part000of001-00001.array_record")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match=r"part000of001-00001.array_record has \d+ bytes.*"
                                        r"data.bad_files=skip"):
        pipeline.make_train_batches(replace(data, prepared_dir=out), P)
    split = prepared.PreparedSplit(out, "ifp_fact_tool", "train", P, 20, manifest, "skip")
    assert len(split) == 7000 and "00001" in split.skipped_files[0]
    batches = pipeline.make_train_batches(replace(data, prepared_dir=out, bad_files="skip"), P)
    assert batches.batch_at(0)["decoder_target_tokens"].shape == (32, 20)
    # Same size, damaged inside: the reader's checksums catch it when read.
    other = os.path.join(out, "ifp_fact_tool", "train", "part000of001-00000.array_record")
    blob = bytearray(open(other, "rb").read())
    for i in range(len(blob) // 3, len(blob) // 3 + 64):
        blob[i] ^= 0xFF
    open(other, "wb").write(bytes(blob))
    damaged = prepared.PreparedSplit(out, "ifp_fact_tool", "train", P, 20, manifest, "skip")
    with pytest.raises(DataError, match="damaged"):
        damaged.read(np.arange(3000))


def test_decoder_prefix_is_checked_per_task_so_a_sub_mixture_still_reads():
    """The decoder prefix (a tokenizer's BOS, vocab/decoder_prefix.py) is compared for the tasks
    the config needs only, as their settings are: a sub-mixture of what was prepared with a
    tokenizer.json vocabulary is accepted; another prefix for a needed task is refused."""
    base = {"seq_len": 20, "predictor_max_len": P, "vocabulary": "tok/tokenizer.json",
            "predictor_vocabulary": "tok/tokenizer.json"}
    stored = {**base, "mixture": "big", "tasks": {"a": "fa", "b": "fb"},
              "decoder_prefix": {"a": [1], "b": []}}
    manifest = {"fingerprint": stored}
    prepared.check_fingerprint("DIR", manifest, {**base, "mixture": "small",
                                                 "tasks": {"a": "fa"},
                                                 "decoder_prefix": {"a": [1]}})
    with pytest.raises(DataError, match=r"task 'b' was prepared with decoder prefix \[\], this "
                                        r"config has \[1\]; prepare it again"):
        prepared.check_fingerprint("DIR", manifest, {**base, "tasks": {"b": "fb"},
                                                     "decoder_prefix": {"b": [1]}})
    # No key: prepared before decoder prefixes, when every task started from seqio's 0.
    old = {"fingerprint": {**base, "tasks": {"a": "fa"}}}
    with pytest.raises(DataError, match=r"task 'a' was prepared with decoder prefix \[0\]"):
        prepared.check_fingerprint("DIR", old, {**base, "tasks": {"a": "fa"},
                                                "decoder_prefix": {"a": [1]}})
    prepared.check_fingerprint("DIR", old, {**base, "tasks": {"a": "fa"}})
