"""A seqio Vocabulary over a Hugging Face tokenizer.json (the `tokenizers` library)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf
from tokenizers import Tokenizer

from ifp_jax.data.errors import DataError

# Where the special tokens are named, in order of precedence (both sit beside tokenizer.json).
_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# EOS by name when neither file names one (SentencePiece Llama/Mistral, GPT-2 style, Llama 3).
_KNOWN_EOS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")


def _special_tokens(directory: str) -> dict[str, str]:
    """{'eos_token': '</s>', ...} from tokenizer_config.json / special_tokens_map.json."""
    found: dict[str, str] = {}
    for name in reversed(_SPECIAL_FILES):  # the first file wins
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for key in ("eos_token", "bos_token", "unk_token", "pad_token"):
            value = data.get(key)
            if isinstance(value, dict):  # a serialised AddedToken
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


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
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise DataError(f"{path} not found: a Hugging Face vocabulary is a tokenizer.json "
                            f"(or a directory holding one)")
        self.path = path
        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - the library raises bare Exceptions
            raise DataError(f"{path} is not a tokenizer.json the tokenizers library can read "
                            f"({str(e).splitlines()[0][:200]})") from None
        self._json_md5 = hashlib.md5(self._tokenizer.to_str().encode()).hexdigest()
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self._size = max(vocab.values()) + 1
        names = _special_tokens(os.path.dirname(path))
        eos = names.get("eos_token") or next((t for t in _KNOWN_EOS if t in vocab), None)
        if eos not in vocab:
            raise DataError(f"{path}: no EOS token found; put a tokenizer_config.json with "
                            f"\"eos_token\" beside it")
        self._eos_id = vocab[eos]
        unk = names.get("unk_token") or getattr(self._tokenizer.model, "unk_token", None)
        self._unk_id = vocab.get(unk) if unk else None
        self._bos_id = vocab.get(names["bos_token"]) if "bos_token" in names else None
        special = {t.content for t in self._tokenizer.get_added_tokens_decoder().values()
                   if t.special} | set(names.values())
        self.id0_is_special = self._tokenizer.id_to_token(0) in special
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (TensorFlow-free encoding)."""
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def _base_vocab_size(self) -> int:
        return self._size  # highest id + 1 (added tokens included)

    def _encode(self, s: str | bytes) -> Sequence[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._eos_id in ids:
            # seqio's decode_tf has replaced what follows EOS with pad_id (0), which may be an
            # ordinary token here: stop at EOS instead of decoding it.
            ids = ids[:ids.index(self._eos_id)]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

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
        return (isinstance(other, HFTokenizerVocabulary) and self._json_md5 == other._json_md5
                and self._eos_id == other._eos_id and self._unk_id == other._unk_id)

    def __hash__(self) -> int:
        return hash((self._json_md5, self._eos_id, self._unk_id))

    def __str__(self) -> str:
        return f"HFTokenizerVocabulary(file={self.path}, md5={self._json_md5})"
