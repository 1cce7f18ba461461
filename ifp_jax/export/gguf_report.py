"""What a written GGUF costs: its size, and how far its (dequantised) weights move the logits.

The file is read back as llama.cpp would see its weights (gguf_file/gguf_writer.read_gguf: every
tensor dequantised by the gguf package, q/k un-permuted), turned into our params and run through
our own decoder next to the f32 params it was written from, on a few fixed texts (and the
selection text). An f32 file reads back bit-exact: when every read-back weight equals the one it
was written from, the logits cannot differ, so the figures are 0 and 1.0 without the two forward
passes (whose compile is most of a 135M report's time); anything else runs them.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

# Fixed texts: plain words, digits and punctuation, non-ASCII (multi-byte ids in any vocabulary).
REPORT_TEXTS = ("The quick brown fox jumps over the lazy dog.",
                "Sort 7, 3, 12 and 5: the answer is 3 5 7 12.",
                "caf\u00e9 na\u00efve \u65e5\u672c \U0001f999 = ok")
_MAX_TOKENS = 64  # per text: the figure needs positions, not whole documents


def _batch(vocabulary: str, texts: tuple[str, ...], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token ids [B, T] and the mask [B, T] of real positions (causal attention:
    padding after a position does not change its logits)."""
    from ifp_jax.vocab.light import get_light_vocabulary
    vocab = get_light_vocabulary(vocabulary)
    rows = [vocab.encode(t)[:min(_MAX_TOKENS, max_len)] or [0] for t in texts]
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int32)
    real = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], real[i, :len(r)] = r, True
    return ids, real


def gguf_logit_report(path: str, gguf_type: str, cfg, params: dict, vocabulary: str,
                      extra_text: str | None = None) -> dict:
    """{"type", "file_bytes", "vs_f32": {max_abs_logit_diff, top1_agreement, positions, texts}}
    for the GGUF at `path`, written from `params` (numpy f32, our layout, ModelConfig `cfg`)."""
    import jax
    import jax.numpy as jnp
    from ifp_jax.gguf_file.gguf_writer import read_gguf
    from ifp_jax.hf.weights import params_from_hf
    from ifp_jax.model.decoder import Decoder
    _, tensors, _, _ = read_gguf(path)
    cfg = dataclasses.replace(cfg, attention="xla")  # plain attention: same path for both runs
    read_back = params_from_hf({k: np.asarray(v, np.float32) for k, v in tensors.items()}, cfg)
    del tensors
    texts = REPORT_TEXTS + ((extra_text,) if extra_text else ())
    ids, real = _batch(vocabulary, texts, cfg.max_len)
    exact = _bit_exact(read_back, params, cfg.vocab_size)
    if exact:
        diff, top1 = np.zeros(1), np.ones(1)
    else:
        forward = jax.jit(Decoder(cfg).apply)
        want = np.asarray(forward({"params": params}, jnp.asarray(ids)))[..., :cfg.vocab_size]
        got = np.asarray(forward({"params": read_back}, jnp.asarray(ids)))[..., :cfg.vocab_size]
        diff = np.abs(got - want).max(axis=-1)[real]
        top1 = (got.argmax(-1) == want.argmax(-1))[real]
    return {"type": gguf_type, "file_bytes": os.path.getsize(path),
            "vs_f32": {"max_abs_logit_diff": float(diff.max()),
                       "top1_agreement": float(top1.mean()), "positions": int(real.sum()),
                       "weights_bit_exact": exact, "texts": list(texts)}}


# The vocabulary axis of the weights padded past vocab_size (rows no id reads, logits sliced off).
_VOCAB_AXIS = {("embed_tokens", "embedding"): 0, ("lm_head", "kernel"): 1}


def _bit_exact(read_back: dict, params: dict, vocab_size: int) -> bool:
    """Whether two param trees hold the same paths with bitwise-equal values (on the padded
    vocabulary weights, the first vocab_size ids only: the padding is not written)."""
    from flax.traverse_util import flatten_dict

    def used(path, x):
        axis = _VOCAB_AXIS.get(path[-2:])
        x = np.asarray(x)
        return x if axis is None else np.take(x, range(min(vocab_size, x.shape[axis])), axis)

    a, b = flatten_dict(read_back), flatten_dict(params)
    return a.keys() == b.keys() and all(
        np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
        and np.array_equal(used(k, a[k]), used(k, b[k])) for k in a)
