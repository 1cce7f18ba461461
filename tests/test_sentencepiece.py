"""A SentencePiece LLM vocabulary (byte predictor vocabulary) trains; a too-small model refuses."""

import os
import sysconfig

import pytest
import sentencepiece as spm

from ifp_jax.commands.main import main as ifp_main
from ifp_jax.config import replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.vocab.seqio_vocab import get_vocabulary
from ifp_jax.train.loop import train
from tests.helpers import tiny_config

SP_VOCAB = 200


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """Trains a small SentencePiece model on stdlib source (shipped with every Python)."""
    d = tmp_path_factory.mktemp("sp")
    text = d / "corpus.txt"
    stdlib = sysconfig.get_paths()["stdlib"]
    with open(text, "w") as out:
        for name in ("json/__init__.py", "string.py", "textwrap.py", "difflib.py"):
            with open(os.path.join(stdlib, name), encoding="utf-8") as f:
                out.write(f.read())
        out.write("reverse sort upper rotate add brackets = 0 1 2 3 4 5 6 7 8 9\n" * 50)
    prefix = str(d / "sp")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=prefix, vocab_size=SP_VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    return prefix + ".model"


def test_sentencepiece_vocabulary_trains_and_round_trips(sp_model, tmp_path):
    vocab = get_vocabulary(sp_model)
    assert vocab.vocab_size == SP_VOCAB
    assert vocab.decode(vocab.encode("reverse abc =")) == "reverse abc ="
    cfg = tiny_config(name="sp_tiny", steps=4, mixture="ifp_multiskill")
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=SP_VOCAB),
                  data=replace(cfg.data, vocabulary=sp_model))
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    batch = next(pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len))
    assert batch["decoder_target_tokens"].max() < SP_VOCAB
    # The predictor keeps its own byte vocabulary: the same prompt, tokenized differently.
    assert batch["predictor_tokens"].max() > 0
    state = train(cfg, str(tmp_path / "run"))
    assert int(state.step) == 4
    assert state.params["decoder"]["embed_tokens"]["embedding"].shape[0] >= SP_VOCAB


def test_vocabulary_larger_than_model_is_refused_before_any_write(sp_model, tmp_path, capsys):
    workdir = tmp_path / "run"
    code = ifp_main(["train", "tiny_multiskill", "--workdir", str(workdir),
                     f"data.vocabulary={sp_model}", "model.vocab_size=100"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ifp: error:") and "set model.vocab_size=200" in err
    assert len(err.splitlines()) == 1
    assert not workdir.exists()
