"""SoftTopK: a differentiable selection of exactly k FFN units per layer row.

Sigmoid (binary-entropy) form (docs/method.md#softtopk): lambda_i = sigmoid((z_i - t) / eps), with
the threshold t found so that sum_i lambda_i = k (bisection, then Newton steps for f32 precision).
Gradient: implicit differentiation of the constraint (our documented choice; no unrolling, so the
backward pass costs O(F) whatever the iteration count). With g_i = lambda_i (1 - lambda_i) / eps,

    d lambda / d z = diag(g) - g g^T / sum(g)      (rows sum to 0: shift invariance).

Training mask  m = lambda * TopK(lambda, k)   (exactly k non-zeros; gradient flows through lambda).
Eval mask      'lambda': the same;  'hard': the 0/1 TopK (costs accuracy unless lambda saturates;
               lambda is free at inference, it scales rows of W_down:
               docs/findings.md#lambda-or-01-at-inference).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _threshold(z: jax.Array, k: int, eps: jax.Array, iters: int) -> jax.Array:
    """t [..., 1] with sum(sigmoid((z - t) / eps)) = k along the last axis (0 < k < F)."""
    f = z.shape[-1]
    margin = eps * (math.log(f) + 1.0)  # at these ends the sum is < 1 and > F - 1
    lo = jnp.max(z, axis=-1, keepdims=True) + margin  # t large -> sum small
    hi = jnp.min(z, axis=-1, keepdims=True) - margin  # t small -> sum large
    total = lambda t: jax.nn.sigmoid((z - t) / eps).sum(-1, keepdims=True)

    def bisect(_, bounds):
        small_t, large_t = bounds
        mid = 0.5 * (small_t + large_t)
        too_many = total(mid) > k
        return jnp.where(too_many, mid, small_t), jnp.where(too_many, large_t, mid)

    small_t, large_t = jax.lax.fori_loop(0, iters, bisect, (hi, lo))
    t = 0.5 * (small_t + large_t)
    for _ in range(3):  # Newton polish: bisection in f32 stalls at the threshold's ulp
        lam = jax.nn.sigmoid((z - t) / eps)
        slope = jnp.maximum((lam * (1 - lam)).sum(-1, keepdims=True) / eps, 1e-20)
        t = jnp.clip(t + (lam.sum(-1, keepdims=True) - k) / slope, small_t, large_t)
    return t


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 3))
def soft_topk(scores: jax.Array, k: int, temperature: jax.Array, iters: int = 40) -> jax.Array:
    """scores [..., F] -> lambda [..., F] in [0, 1] with sum = k along the last axis (f32)."""
    lam, _ = _soft_topk_fwd(scores, k, temperature, iters)
    return lam


def _soft_topk_fwd(scores, k, temperature, iters):
    z = scores.astype(jnp.float32)
    eps = jnp.asarray(temperature, jnp.float32)
    if k >= z.shape[-1]:
        lam = jnp.ones_like(z)
    else:
        t = jax.lax.stop_gradient(_threshold(z, k, eps, iters))
        lam = jax.nn.sigmoid((z - t) / eps)
    return lam, (lam, eps)


def _soft_topk_bwd(k, iters, residuals, cot):
    lam, eps = residuals
    g = lam * (1 - lam) / eps
    gv = (g * cot).sum(-1, keepdims=True)
    gs = jnp.maximum(g.sum(-1, keepdims=True), 1e-20)
    dz = g * cot - g * gv / gs
    return dz, jnp.zeros_like(eps)  # the temperature is a schedule, not a parameter


soft_topk.defvjp(_soft_topk_fwd, _soft_topk_bwd)


def topk_indicator(values: jax.Array, k: int) -> jax.Array:
    """0/1 [..., F] with exactly k ones at the k largest entries of each row (ties by index)."""
    _, idx = jax.lax.top_k(values, k)
    ones = jnp.ones(idx.shape, values.dtype)
    return jnp.put_along_axis(jnp.zeros_like(values), idx, ones, axis=-1, inplace=False)


def compute_mask(scores: jax.Array, k: int, temperature: jax.Array, iters: int,
                 hard: bool) -> tuple[jax.Array, jax.Array]:
    """scores [B, L, F] -> (mask, lambda), both [B, L, F] f32.

    mask = lambda * TopK(lambda, k), or the 0/1 TopK when `hard`.
    """
    lam = soft_topk(scores, k, temperature, iters)
    top = jax.lax.stop_gradient(topk_indicator(lam, k))
    return (top if hard else lam * top), lam


def balance_loss(lam: jax.Array, k: int) -> jax.Array:
    """Load-balancing penalty against mask collapse (departure from the paper,
    docs/findings.md#mask-collapse).

    (F / k^2) * sum_i (mean_b lambda_bi)^2, averaged over layers. lam [B, L, F]. Its minimum, 1,
    is reached when every unit is used equally often across the batch (mean lambda = k / F).
    """
    f = lam.shape[-1]
    usage = lam.mean(axis=0)  # [L, F]
    return (f / k ** 2) * jnp.mean(jnp.sum(usage ** 2, axis=-1))
