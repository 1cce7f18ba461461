"""A Hugging Face tokenizer.json with its special ids, without TensorFlow or seqio.

`HFTokenizerFile` is what `HFTokenizerVocabulary` (the seqio side, data pipeline) wraps and what
serving commands (`ifp export`, `ifp generate`) use directly, so they start without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from tokenizers import Tokenizer

from ifp_jax.errors import DataError

# Where the special tokens are named, in order of precedence (both sit beside tokenizer.json).
_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# EOS by name when neither file names one (SentencePiece Llama/Mistral, GPT-2 style, Llama 3).
_KNOWN_EOS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")


def special_token_names(directory: str) -> dict[str, str]:
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


class HFTokenizerFile:
    """tokenizer.json (or a directory holding one) -> ids; eos_id required (see
    HFTokenizerVocabulary for what id 0 means)."""

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
        names = special_token_names(os.path.dirname(path))
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

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
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
    def size(self) -> int:
        return self._size  # highest id + 1 (added tokens included)

    @property
    def json_md5(self) -> str:
        return self._json_md5

    def encode(self, s: str | bytes) -> Sequence[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._eos_id in ids:
            # seqio's decode_tf has replaced what follows EOS with pad_id (0), which may be an
            # ordinary token here: stop at EOS instead of decoding it.
            ids = ids[:ids.index(self._eos_id)]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

