"""Next-token cross-entropy, whole or chunked over the sequence.

With a 128k vocabulary the logits dominate memory: [B, T, V] f32 at B=2, T=4096, V=128k is
4 GiB per replica, and autodiff keeps it for the backward pass. `chunked_cross_entropy` scans
over sequence chunks and recomputes each chunk's logits in the backward pass (jax.checkpoint),
so only [B, chunk, V] is ever live. Both return per-token losses [B, T] f32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[B, T, V] logits, [B, T] int targets -> [B, T] f32 cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def lm_head_kernel(decoder_params: dict, tie_embeddings: bool) -> jax.Array:
    """The [D, V_padded] output projection of a Decoder's params (tied: the embedding^T)."""
    if tie_embeddings:
        return decoder_params["embed_tokens"]["embedding"].T
    return decoder_params["lm_head"]["kernel"]


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                          vocab_size: int, chunk_len: int, dtype=jnp.float32) -> jax.Array:
    """Cross-entropy of logits = hidden @ kernel[:, :vocab_size], `chunk_len` positions at a time.

    Args:
      hidden: [B, T, D] final-norm hidden states.
      kernel: [D, Vp] output projection (Vp >= vocab_size; padding columns are ignored).
      targets: [B, T] int token ids.
      vocab_size: real vocabulary size (logits beyond it are not part of the softmax).
      chunk_len: positions per chunk; T must be a multiple of it.
      dtype: matmul dtype (the softmax is f32).
    Returns: [B, T] f32 per-token cross-entropy.
    """
    b, t, d = hidden.shape
    if t % chunk_len:
        raise ValueError(f"sequence length {t} is not a multiple of the loss chunk {chunk_len}")
    n = t // chunk_len
    hs = jnp.swapaxes(hidden.reshape(b, n, chunk_len, d), 0, 1)  # [n, B, c, D]
    ts = jnp.swapaxes(targets.reshape(b, n, chunk_len), 0, 1)  # [n, B, c]

    @jax.checkpoint  # keep only the chunk's inputs; recompute its logits in the backward pass
    def one_chunk(h, tgt):
        logits = jnp.einsum("bcd,dv->bcv", h.astype(dtype), kernel.astype(dtype))
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        # Mask the padding columns rather than slicing them: a slice of a vocab axis sharded
        # over 'tensor' would be uneven; a mask keeps every shard's block.
        valid = jnp.arange(logits.shape[-1]) < vocab_size
        return token_cross_entropy(jnp.where(valid, logits.astype(jnp.float32), -1e30), tgt)

    _, ce = jax.lax.scan(lambda c, x: (c, one_chunk(*x)), None, (hs, ts))
    return jnp.swapaxes(ce, 0, 1).reshape(b, t)


def output_cross_entropy(out, params: dict, cfg, targets: jax.Array, dtype) -> jax.Array:
    """[B, T] f32 cross-entropy of an IFPModel output: from its logits, or chunk by chunk from
    its hidden states when cfg.train.logits_chunk_len > 0 (the model then returned those)."""
    chunk = cfg.train.logits_chunk_len
    if chunk > 0:
        kernel = lm_head_kernel(params["decoder"], cfg.model.tie_embeddings)
        return chunked_cross_entropy(out.hidden, kernel, targets, cfg.model.vocab_size, chunk,
                                     dtype)
    return token_cross_entropy(out.logits, targets)
