"""Next-token choice from logits [B, V]: greedy, temperature, or top-p (nucleus) sampling.

The method is static (it decides what gets compiled: greedy never sorts the vocabulary), the
temperature and p are traced values, so one compiled loop serves every temperature / p.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("greedy", "temperature", "top_p")


def method_for(temperature: float, top_p: float) -> str:
    """The cheapest method that realises (temperature, top_p): temperature 0 is greedy whatever
    p; p = 1 keeps the whole vocabulary (no sort)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if temperature == 0:
        return "greedy"
    return "temperature" if top_p >= 1.0 else "top_p"


def greedy(logits: jax.Array) -> jax.Array:
    """[B, V] -> [B] int32 argmax (the first index on ties, as jnp.argmax)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """[B, V] -> the same logits with every token outside the nucleus set to -inf.

    The nucleus is the smallest set of most probable tokens whose probability reaches top_p;
    the most probable token is always in it, so p -> 0 is greedy. Tokens tied with the least
    probable member are kept too (a threshold on the logit, no scatter back from sorted order).
    """
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable tokens
    keep = (before < top_p).at[:, 0].set(True)
    cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def sample(logits: jax.Array, key: jax.Array, method: str, temperature: jax.Array | float = 1.0,
           top_p: jax.Array | float = 1.0) -> jax.Array:
    """[B, V] logits -> [B] int32 tokens; temperature is applied before the top-p cut (as in
    Hugging Face's sampling). `key` is unused by greedy."""
    if method == "greedy":
        return greedy(logits)
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    scaled = logits / jnp.asarray(temperature, logits.dtype)
    if method == "top_p":
        scaled = top_p_filter(scaled, jnp.asarray(top_p, logits.dtype))
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
