"""Vocabularies by name: 'byte' or a SentencePiece model path (LLM and predictor may differ)."""

from __future__ import annotations

import functools
import os

import seqio

from ifp_jax.data.errors import DataError


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """'byte' -> seqio.ByteVocabulary (pad 0, eos 1, unk 2, 259 ids); else a SentencePiece path.

    Cached so that every task sharing a spec shares one vocabulary object (SentencePiece models
    are loaded once per process).
    """
    if spec == "byte":
        return seqio.ByteVocabulary()
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
        raise DataError(f"vocabulary '{spec}' is neither 'byte' nor an existing SentencePiece "
                        f"model file; set data.vocabulary / data.predictor_vocabulary to 'byte' "
                        f"or a .model path")
    return seqio.SentencePieceVocabulary(path)


def check_vocab_fits(spec: str, model_vocab_size: int, key: str, model_key: str) -> None:
    """An id >= the embedding's vocab_size would be clamped silently by the lookup: refuse it."""
    n = get_vocabulary(spec).vocab_size
    if n > model_vocab_size:
        raise DataError(f"{key}='{spec}' has {n} ids but {model_key}={model_vocab_size}; "
                        f"set {model_key}={n}")
