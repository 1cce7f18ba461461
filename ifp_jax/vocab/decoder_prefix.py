"""The decoder's prefix for a vocabulary: the ids the model reads before a prompt's own tokens.

A model must read its prompts as its own tokenizer makes them, as Hugging Face
`tokenizer(prompt)` (add_special_tokens=True) does:
  tokenizer.json  the special ids its post-processor puts before the text: Llama 3's BOS
                  128000, Llama 2's <s> 1; none for SmolLM2 (whose add_bos_token is false).
                  transformers' fast tokenizer does the same (the post-processor decides).
  'byte', *.model seqio adds no BOS: the decoder starts from 0, as every run always has.
A chat template writes its own special tokens (bos_token included when it uses it) and is
tokenized without the post-processor's, as transformers' apply_chat_template does: prefix ().

The data pipeline (targets = (prefix + prompt + response + EOS)[1:]), evaluation, `ifp
generate`, serving and export all take the prefix from `decoder_prefix`.
"""

from __future__ import annotations

import functools
import os

SEQIO_START = (0,)  # seqio's decoder start: targets shifted right with 0 first
_PROBE = "a"  # any text: what the post-processor adds around it is what it adds around all


@functools.lru_cache(maxsize=None)
def decoder_prefix(vocabulary: str, chat_template: bool = False) -> tuple[int, ...]:
    """Ids before the prompt's tokens for `vocabulary` (a get_vocabulary spec); () under a chat
    template (its text carries its own BOS)."""
    if chat_template:
        return ()
    path = os.path.expanduser(vocabulary)
    if vocabulary == "byte" or not (path.endswith(".json") or os.path.isdir(path)):
        return SEQIO_START
    from ifp_jax.vocab.tokenizer_json import HFTokenizerFile
    return tokenizer_prefix(HFTokenizerFile(path).tokenizer)


def tokenizer_prefix(tokenizer) -> tuple[int, ...]:
    """The ids a `tokenizers.Tokenizer`'s post-processor puts before a single text."""
    plain = tokenizer.encode(_PROBE, add_special_tokens=False).ids
    full = tokenizer.encode(_PROBE, add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return tuple(full[:start])
    return ()
