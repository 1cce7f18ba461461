"""A generated text corpus of any size (for `ifp bench data` and the streaming tests): no
download, the same bytes for the same seed.

Words are drawn from a fixed 5,000-word vocabulary of random lowercase strings with Zipf-like
frequencies (text-like byte statistics); a document is a slice of a seeded 4 MiB pool of such
text at a random offset and length (1-8 KiB), documents are separated by blank lines (the .txt
document rule of text_files.py), and files hold `file_bytes` each.
"""

from __future__ import annotations

import os

import numpy as np

POOL_BYTES = 4 << 20
VOCAB_WORDS = 5000


def _pool(rng: np.random.Generator) -> bytes:
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    lengths = rng.integers(2, 10, VOCAB_WORDS)
    words = [letters[rng.integers(0, 26, n)].tobytes() for n in lengths]
    weights = 1.0 / np.arange(1, VOCAB_WORDS + 1)
    picks = rng.choice(VOCAB_WORDS, size=POOL_BYTES // 5, p=weights / weights.sum())
    return b" ".join(words[i] for i in picks)[:POOL_BYTES]


def generate_corpus(out: str, total_bytes: int, seed: int = 0,
                    file_bytes: int = 64 << 20) -> list[str]:
    """Writes about `total_bytes` of text into `out/corpus-NNNNN.txt` files (reusing files that
    are already complete, so a rerun costs nothing); returns their paths."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = _pool(rng)
    paths, written, number = [], 0, 0
    while written < total_bytes:
        size = min(file_bytes, total_bytes - written)
        path = os.path.join(out, f"corpus-{number:05d}.txt")
        file_rng = np.random.default_rng([seed, number])
        if not (os.path.exists(path) and os.path.getsize(path) >= size):
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                done = 0
                while done < size:
                    n = int(file_rng.integers(1 << 10, 8 << 10))
                    start = int(file_rng.integers(0, len(pool) - n))
                    doc = pool[start:start + n].strip() + b"\n\n"
                    f.write(doc)
                    done += len(doc)
            os.replace(tmp, path)
        paths.append(path)
        written += os.path.getsize(path)
        number += 1
    return paths
