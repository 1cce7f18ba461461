"""Text <-> ids for a vocabulary spec without importing TensorFlow (seqio does, ~5 s).

Serving commands (`ifp export`, `ifp generate`) tokenize one prompt; they use this instead of
`vocab.get_vocabulary`, and produce the same ids (tests/test_export.py checks it):
  'byte'        seqio.ByteVocabulary: byte b -> b + 3 (pad 0, eos 1, unk 2)
  *.model       SentencePiece (the sentencepiece library seqio itself wraps)
  tokenizer.json (or a directory holding one): Hugging Face `tokenizers`
"""

from __future__ import annotations

import functools
import os

from ifp_jax.errors import DataError

BYTE_OFFSET = 3
BYTE_EOS_ID = 1


class LightVocabulary:
    """encode(text) -> list[int]; decode(ids) -> str; eos_id; vocab_size."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec == "byte":
            self.kind, self.eos_id, self.vocab_size = "byte", BYTE_EOS_ID, 256 + BYTE_OFFSET
            return
        path = os.path.expanduser(spec)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise DataError(f"vocabulary '{spec}' is neither 'byte' nor an existing SentencePiece "
                            f"model or tokenizer.json; set data.vocabulary to one of those")
        if path.endswith(".json"):
            from ifp_jax.vocab.tokenizer_json import HFTokenizerFile
            self.kind, self._hf = "hf", HFTokenizerFile(path)
            self.eos_id, self.vocab_size = self._hf.eos_id, self._hf.size
        else:
            import sentencepiece as spm
            self.kind, self._sp = "spm", spm.SentencePieceProcessor(model_file=path)
            self.eos_id, self.vocab_size = self._sp.eos_id(), self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if self.kind == "byte":
            return [b + BYTE_OFFSET for b in text.encode("utf-8")]
        if self.kind == "hf":
            return list(self._hf.encode(text))
        return list(self._sp.encode(text))

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "byte":  # specials decode to nothing, like seqio
            return bytes(i - BYTE_OFFSET for i in ids
                         if BYTE_OFFSET <= i < 256 + BYTE_OFFSET).decode("utf-8", errors="ignore")
        if self.kind == "hf":
            return self._hf.decode(ids)
        return self._sp.decode(ids)


@functools.lru_cache(maxsize=None)
def get_light_vocabulary(spec: str) -> LightVocabulary:
    return LightVocabulary(spec)
