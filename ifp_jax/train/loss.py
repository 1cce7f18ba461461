"""Next-token cross-entropy (and the distillation KL), whole or chunked over the sequence.

With a 128k vocabulary the logits dominate memory: [B, T, V] f32 at B=2, T=4096, V=128k is
4 GiB per replica, and autodiff keeps it for the backward pass. `chunked_cross_entropy` scans
over sequence chunks and recomputes each chunk's logits in the backward pass (jax.checkpoint),
so only [B, chunk, V] is ever live. Both return per-token losses [B, T] f32.

Distillation (config.DistillConfig) adds, per token, the KL from a teacher's top-K truncated
next-token distribution to the student's: sum_i p_i (log p_i - log q(id_i)), where p is the
teacher's softmax renormalised over its K most likely ids and q the student's full softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[B, T, V] logits, [B, T] int targets -> [B, T] f32 cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def token_topk_kl(logits: jax.Array, teacher_ids: jax.Array,
                  teacher_logprobs: jax.Array) -> jax.Array:
    """[B, T, V] student logits, [B, T, K] teacher ids and log-probs -> [B, T] f32 KL."""
    logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logq_at = jnp.take_along_axis(logq, teacher_ids, axis=-1)
    return jnp.sum(jnp.exp(teacher_logprobs) * (teacher_logprobs - logq_at), axis=-1)


def lm_head_kernel(decoder_params: dict, tie_embeddings: bool) -> jax.Array:
    """The [D, V_padded] output projection of a Decoder's params (tied: the embedding^T)."""
    if tie_embeddings:
        return decoder_params["embed_tokens"]["embedding"].T
    return decoder_params["lm_head"]["kernel"]


def chunked_losses(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, vocab_size: int,
                   chunk_len: int, dtype=jnp.float32, teacher: tuple | None = None
                   ) -> tuple[jax.Array, jax.Array | None]:
    """Cross-entropy (and the top-K KL to `teacher`) of logits = hidden @ kernel[:, :vocab_size],
    `chunk_len` positions at a time.

    Args:
      hidden: [B, T, D] final-norm hidden states.
      kernel: [D, Vp] output projection (Vp >= vocab_size; padding columns are ignored).
      targets: [B, T] int token ids.
      vocab_size: real vocabulary size (logits beyond it are not part of the softmax).
      chunk_len: positions per chunk; T must be a multiple of it.
      dtype: matmul dtype (the softmax is f32).
      teacher: None, or (ids [B, T, K] int32, log-probs [B, T, K] f32).
    Returns: ([B, T] f32 cross-entropy, [B, T] f32 KL or None).
    """
    b, t, d = hidden.shape
    if t % chunk_len:
        raise ValueError(f"sequence length {t} is not a multiple of the loss chunk {chunk_len}")
    n = t // chunk_len
    by_chunk = lambda x: jnp.swapaxes(x.reshape((b, n, chunk_len) + x.shape[2:]), 0, 1)
    xs = (by_chunk(hidden), by_chunk(targets)) + tuple(by_chunk(x) for x in teacher or ())

    @jax.checkpoint  # keep only the chunk's inputs; recompute its logits in the backward pass
    def one_chunk(h, tgt, *teacher_chunk):
        logits = jnp.einsum("bcd,dv->bcv", h.astype(dtype), kernel.astype(dtype))
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        # Mask the padding columns rather than slicing them: a slice of a vocab axis sharded
        # over 'tensor' would be uneven; a mask keeps every shard's block.
        valid = jnp.arange(logits.shape[-1]) < vocab_size
        logits = jnp.where(valid, logits.astype(jnp.float32), -1e30)
        ce = token_cross_entropy(logits, tgt)
        return (ce, token_topk_kl(logits, *teacher_chunk)) if teacher_chunk else (ce, ce)

    _, (ce, kl) = jax.lax.scan(lambda c, x: (c, one_chunk(*x)), None, xs)
    unchunk = lambda x: jnp.swapaxes(x, 0, 1).reshape(b, t)
    return unchunk(ce), (unchunk(kl) if teacher else None)


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                          vocab_size: int, chunk_len: int, dtype=jnp.float32) -> jax.Array:
    """[B, T] f32 cross-entropy, chunk by chunk (chunked_losses without a teacher)."""
    return chunked_losses(hidden, kernel, targets, vocab_size, chunk_len, dtype)[0]


def output_losses(out, params: dict, cfg, targets: jax.Array, dtype,
                  teacher: tuple | None = None) -> tuple[jax.Array, jax.Array | None]:
    """([B, T] f32 cross-entropy, [B, T] f32 top-K KL to `teacher` or None) of an IFPModel
    output: from its logits, or chunk by chunk from its hidden states when
    cfg.train.logits_chunk_len > 0 (the model then returned those)."""
    chunk = cfg.train.logits_chunk_len
    if chunk > 0:
        kernel = lm_head_kernel(params["decoder"], cfg.model.tie_embeddings)
        return chunked_losses(out.hidden, kernel, targets, cfg.model.vocab_size, chunk, dtype,
                              teacher)
    kl = token_topk_kl(out.logits, *teacher) if teacher else None
    return token_cross_entropy(out.logits, targets), kl


def output_cross_entropy(out, params: dict, cfg, targets: jax.Array, dtype) -> jax.Array:
    """[B, T] f32 cross-entropy of an IFPModel output (output_losses without a teacher)."""
    return output_losses(out, params, cfg, targets, dtype)[0]
