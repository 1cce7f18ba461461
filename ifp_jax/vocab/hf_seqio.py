"""A seqio Vocabulary over a Hugging Face tokenizer.json (the `tokenizers` library)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from ifp_jax.tf_import import seqio, tf
from ifp_jax.vocab.tokenizer_json import HFTokenizerFile


class HFTokenizerVocabulary(seqio.Vocabulary):
    """seqio Vocabulary over a `tokenizers.Tokenizer` (a tokenizer.json).

    Ids are the tokenizer's own (an imported model's embedding rows). Text is encoded without
    special tokens: no BOS, and EOS only where a seqio Feature adds it (add_eos).

    Padding: the pipeline right-pads every feature with id 0 and the predictor reads 0 as
    padding (data/pipeline.py, model/predictor.py), so `pad_id` is 0 whatever the tokenizer
    calls its pad token (seqio's contract: PAD_ID = 0). What id 0 is depends on the tokenizer:
      * a special token (<pad>; <unk> in Llama 1/2 and Mistral tokenizers): text encodes to it
        only as <unk> for unknown characters, so padding is unambiguous;
      * an ordinary token (Llama 3's '!'): the predictor cannot tell it from padding and skips
        it in the prompt; the LLM's loss weights are unaffected. `id0_is_special` says which.
    The tokenizer's own pad token, if it has one at another id, is never produced.

    eos_id is required: tokenizer_config.json's (or special_tokens_map.json's) eos_token, else
    one of the usual EOS names. Decoding stops at the first EOS and drops special tokens.
    """

    def __init__(self, path: str):
        self._file = HFTokenizerFile(path)  # every id and the text codec live there
        self.path = self._file.path
        self.id0_is_special = self._file.id0_is_special
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (TensorFlow-free encoding)."""
        return self._file.tokenizer

    @property
    def eos_id(self) -> int:
        return self._file.eos_id

    @property
    def unk_id(self) -> int | None:
        return self._file.unk_id

    @property
    def bos_id(self) -> int | None:
        return self._file.bos_id

    @property
    def _base_vocab_size(self) -> int:
        return self._file.size

    def _encode(self, s: str | bytes) -> Sequence[int]:
        return self._file.encode(s)

    def _decode(self, ids) -> str:
        return self._file.decode(ids)

    # Through Python (tokenizers has no TF kernel). tf.numpy_function rather than py_function:
    # no eager-tensor round trip, about 3x less overhead per example in a tf.data map.
    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """A scalar tf.string -> [n] int32."""
        def encode(b):  # bytes in a graph (tf.data); a 0-d object array when run eagerly
            return np.asarray(self._encode(b.item() if isinstance(b, np.ndarray) else b),
                              np.int32)
        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """[..., n] int ids -> [...] tf.string."""
        def decode(a):
            rows = a.reshape(-1, a.shape[-1])
            out = np.array([self._decode(r).encode("utf-8") for r in rows], dtype=object)
            return out.reshape(a.shape[:-1])
        text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        text.set_shape(ids.shape[:-1])
        return text

    def __eq__(self, other) -> bool:
        return (isinstance(other, HFTokenizerVocabulary) and self._key() == other._key())

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return self._file.json_md5, self._file.eos_id, self._file.unk_id

    def __str__(self) -> str:
        return f"HFTokenizerVocabulary(file={self.path}, md5={self._file.json_md5})"
