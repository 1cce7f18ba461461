"""What the predictor reads: a prompt's LAST P tokens (its feature is the last token's state).

One rule for training data (data/pipeline.py, vectorised over examples) and for one text at
selection time (`predictor_tokens`), so a prompt longer than P is cut the same way in both.
"""

from __future__ import annotations

import numpy as np

from ifp_jax.config import ConfigError


def kept_window(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) [N] of the tokens the predictor keeps from prompts of `lengths` [N]: the
    last min(length, max_len); e.g. lengths [3, 9], max_len 4 -> starts [0, 5], counts [3, 4]."""
    counts = np.minimum(lengths, max_len)
    return lengths - counts, counts


def predictor_tokens(vocab, text: str, max_len: int) -> np.ndarray:
    """Prompt text -> [1, P] int32 as the data pipeline builds it (no EOS; a longer prompt keeps
    its last P tokens; right-padded with 0)."""
    ids = list(vocab.encode(text))
    if not ids:
        raise ConfigError("the prompt is empty; pass a non-empty --prompt / --instruction")
    return predictor_row(ids, max_len)


def predictor_row(ids, max_len: int) -> np.ndarray:
    """Prompt ids (already in the predictor's vocabulary) -> [1, P] int32, as above."""
    ids = np.asarray(ids, np.int64)
    start, count = kept_window(np.array([len(ids)]), max_len)
    out = np.zeros((1, max_len), np.int32)
    out[0, :count[0]] = ids[start[0]:]
    return out
