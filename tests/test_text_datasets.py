"""CPT over local TFDS and Hugging Face `datasets` corpora (data.text_datasets): each source gives
the documents the same texts give as a .jsonl file, through the same held-out rule, task and
preparation; a source that is not there locally is a one-line error. Both datasets are built
here, on local disk: nothing is downloaded."""

import json

import numpy as np
import pytest

from ifp_jax.config import DataConfig
from ifp_jax.data import pipeline, tasks, text_datasets, text_files
from ifp_jax.errors import DataError

TEXTS = [f"document {i}: " + "word " * (i % 7 + 3) for i in range(45)]


@pytest.fixture(scope="module")
def local_sources(tmp_path_factory):
    """(tfds data_dir, hf save_to_disk dir, hf parquet dir, jsonl file), all holding TEXTS."""
    import datasets
    import tensorflow as tf
    import tensorflow_datasets as tfds
    root = tmp_path_factory.mktemp("sources")
    tfds.dataset_builders.store_as_tfds_dataset(
        name="ifp_test_corpus", version="1.0.0",
        features=tfds.features.FeaturesDict({"body": tfds.features.Text()}),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"body": TEXTS})},
        data_dir=str(root / "tfds"), disable_shuffling=True)
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": TEXTS})})
    saved.save_to_disk(str(root / "hf_saved"))
    (root / "hf_files").mkdir()
    datasets.Dataset.from_dict({"body": TEXTS}).to_parquet(str(root / "hf_files" / "a.parquet"))
    jsonl = root / "same.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS) + "\n")
    return str(root / "tfds"), str(root / "hf_saved"), str(root / "hf_files"), str(jsonl)


@pytest.mark.parametrize("kind", ["tfds", "hf_saved", "hf_files"])
def test_a_dataset_source_gives_the_documents_of_the_same_jsonl(local_sources, kind):
    tfds_dir, hf_saved, hf_files, jsonl = local_sources
    spec = {"tfds": "tfds:ifp_test_corpus:1.0.0", "hf_saved": f"hf:{hf_saved}#train",
            "hf_files": f"hf:{hf_files}"}[kind]
    sources = tuple(text_datasets.parse_sources(spec))
    for split in ("train", "validation"):
        want = list(text_files.documents([jsonl], split, field="body"))
        got = list(text_files.documents([], split, field="body", sources=sources,
                                        tfds_data_dir=tfds_dir))
        assert got == want and got, (kind, split)
    assert len(list(text_files.documents([], "validation", field="body", sources=sources,
                                         tfds_data_dir=tfds_dir))) == 2  # docs 19 and 39


def test_files_and_datasets_make_one_text_task_and_its_examples(local_sources):
    """data.text_files + data.text_datasets register 'ifp_text' over the files then the datasets;
    its examples equal those of one .jsonl file holding the same documents in that order."""
    tfds_dir, hf_saved, _, jsonl = local_sources
    shape = dict(mixture=tasks.TEXT_FILES_TASK, seq_len=24, cpt_chunk_len=8, cpt_num_chunks=3,
                 text_field="body")
    mixed = DataConfig(text_files=jsonl, text_datasets=f"tfds:ifp_test_corpus,hf:{hf_saved}",
                       tfds_data_dir=tfds_dir, **shape)
    tasks.register_all(mixed)
    got = pipeline.to_contract(pipeline.tokenized_examples(tasks.TEXT_FILES_TASK, "train"), 8, 24, (0,))
    tripled = jsonl + ".x3.jsonl"
    with open(jsonl) as f:
        lines = f.read()
    with open(tripled, "w") as f:
        f.write(lines * 3)
    tasks.register_all(DataConfig(text_files=tripled, **shape))
    want = pipeline.to_contract(pipeline.tokenized_examples(tasks.TEXT_FILES_TASK, "train"), 8, 24, (0,))
    assert len(got["decoder_target_tokens"]) > 100
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_source_that_is_not_there_is_a_one_line_error(local_sources, tmp_path):
    tfds_dir, hf_saved, _, _ = local_sources
    cases = [
        ("parquet:/x", "is not KIND:NAME"),
        ("tfds:", "is not KIND:NAME"),
        ("tfds:no_such_corpus_anywhere", "no TFDS dataset 'no_such_corpus_anywhere'"),
        ("tfds:ifp_test_corpus#test", "no split 'test'"),
        (f"hf:{tmp_path / 'missing'}", "cannot read .* locally"),
        (f"hf:{hf_saved}#validation", "no split 'validation'"),
    ]
    for spec, message in cases:
        with pytest.raises(DataError, match=message) as error:
            for source in text_datasets.parse_sources(spec):
                text_datasets.identity(source, tfds_dir)
        assert "\n" not in str(error.value), spec
    source = text_datasets.parse_sources(f"hf:{hf_saved}")[0]
    with pytest.raises(DataError, match="no column 'text'.*data.text_field"):
        list(text_datasets.raw_texts(source, "", "text"))
