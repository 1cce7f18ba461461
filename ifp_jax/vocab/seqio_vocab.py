"""Vocabularies by name: 'byte', a SentencePiece model path or a Hugging Face tokenizer.json
(LLM and predictor may differ)."""

from __future__ import annotations

import functools
import os

from ifp_jax.errors import DataError
from ifp_jax.tf_import import seqio  # TensorFlow imported quietly, once


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """The vocabulary named by `spec`:
      'byte'                                 seqio.ByteVocabulary (pad 0, eos 1, unk 2, 259 ids)
      a *.json file, or a directory holding tokenizer.json
                                             hf.tokenizer.HFTokenizerVocabulary
      any other file                         seqio.SentencePieceVocabulary

    Cached so that every task sharing a spec shares one vocabulary object (models and
    tokenizers are loaded once per process).
    """
    if spec == "byte":
        return seqio.ByteVocabulary()
    path = os.path.expanduser(spec)
    if ((path.endswith(".json") and os.path.isfile(path))
            or os.path.isfile(os.path.join(path, "tokenizer.json"))):
        from ifp_jax.vocab.hf_seqio import HFTokenizerVocabulary  # tokenizers only when used
        return HFTokenizerVocabulary(path)
    if not os.path.isfile(path):
        raise DataError(f"vocabulary '{spec}' is not 'byte', a SentencePiece .model file, a "
                        f"tokenizer.json or a directory holding one; set data.vocabulary / "
                        f"data.predictor_vocabulary to one of those")
    return seqio.SentencePieceVocabulary(path)


def check_vocab_fits(spec: str, model_vocab_size: int, key: str, model_key: str,
                     fix: str | None = None) -> None:
    """An id >= the embedding's vocab_size would be clamped silently by the lookup: refuse it.

    The error ends with `fix`, by default 'set <model_key>=<ids>'."""
    n = get_vocabulary(spec).vocab_size
    if n > model_vocab_size:
        raise DataError(f"{key}='{spec}' has {n} ids but {model_key}={model_vocab_size}; "
                        f"{fix or f'set {model_key}={n}'}")
