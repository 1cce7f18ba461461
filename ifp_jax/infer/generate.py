"""Greedy generation with the mask selected once per prompt.

IFPruning selects the sub-network once, before decoding (PAPER.md §7): the predictor runs on the
prompt, and every generated token uses that one mask. This version recomputes the full sequence
at each step (no KV cache) — exact and simple, adequate for short held-out answers; the
KV-cache decoder for long generations is separate work.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def prompt_only_inputs(decoder_input_tokens: jax.Array, loss_weights: jax.Array):
    """Strips the response from teacher-forcing inputs.

    With seq = prompt(n tokens) + response, inputs = [0, seq[0], ..., seq[T-2]] and the first
    loss position is n. Returns (inputs with positions > n zeroed [B, T], n [B]).
    """
    t = decoder_input_tokens.shape[1]
    n = jnp.argmax(loss_weights > 0, axis=1).astype(jnp.int32)
    keep = jnp.arange(t)[None, :] <= n[:, None]
    return jnp.where(keep, decoder_input_tokens, 0), n


def greedy_decode(logits_fn: Callable[[jax.Array], jax.Array], inputs: jax.Array,
                  start: jax.Array, num_steps: int) -> jax.Array:
    """Greedy continuation.

    Args:
      logits_fn: tokens [B, T] -> logits [B, T, V] (the mask is already fixed inside).
      inputs: [B, T] shifted-right prompt tokens (see `prompt_only_inputs`).
      start: [B] index of the last prompt position in `inputs` (its logits give token 1).
      num_steps: tokens to generate (static).
    Returns: [B, num_steps] generated token ids.
    """
    b, t = inputs.shape
    rows = jnp.arange(b)

    def body(i, carry):
        toks, out = carry
        logits = logits_fn(toks)
        pos = jnp.minimum(start + i, t - 1)
        nxt = jnp.argmax(logits[rows, pos], axis=-1).astype(toks.dtype)
        write = start + i + 1
        toks = toks.at[rows, jnp.minimum(write, t - 1)].set(
            jnp.where(write < t, nxt, toks[rows, t - 1]))
        return toks, out.at[:, i].set(nxt)

    _, out = jax.lax.fori_loop(0, num_steps, body,
                               (inputs, jnp.zeros((b, num_steps), inputs.dtype)))
    return out
