"""Mask-collapse signals, computed on device from a batch of masks.

Collapse (docs/findings.md#mask-collapse) shows as: overlap of kept units *across* tasks as high as
*within* a task (the predictor ignores the prompt), few units ever kept, lambda of kept units far
from 1 (train/eval mismatch of lesson 3). Overlap of two examples a, b in one layer is
|kept_a ∩ kept_b| / k; random selection gives k / F.

Each statistic is a typed `ifp_jax.metric.Average`, so it merges over micro-batches, steps and
eval batches and divides only when reported.
"""

from __future__ import annotations

import jax.numpy as jnp

from ifp_jax.metric import Average


def mask_statistics(mask: jnp.ndarray, lam: jnp.ndarray | None, task_id: jnp.ndarray,
                    num_tasks: int, k: int) -> dict[str, Average]:
    """Collapse statistics of one batch.

    Args:
      mask: [B, L, F] mask (non-zero = kept).
      lam: [B, L, F] SoftTopK lambda, or None (hard / given masks).
      task_id: [B] int task index in [0, num_tasks).
      num_tasks: N, static.
      k: kept units per layer.
    Returns: {'mask/overlap_within_task', 'mask/overlap_across_tasks', 'mask/units_used_frac'
      (+ 'mask/lambda_kept_mean' when lam is given)}, each an Average.
    """
    kept = (mask > 0).astype(jnp.float32)  # [B, L, F]
    n_layers = kept.shape[1]
    onehot = (task_id[:, None] == jnp.arange(num_tasks)[None, :]).astype(jnp.float32)  # [B, N]
    per_task = jnp.einsum("bn,blf->nlf", onehot, kept)  # [N, L, F] kept counts per task
    n = onehot.sum(0)  # [N]
    gram = jnp.einsum("nlf,mlf->nm", per_task, per_task) / n_layers  # [N, N] shared units summed
    # Within a task: pairs of distinct examples. sum_f S_f^2 counts each example with itself (k).
    within_shared = jnp.diag(gram) - n * k
    within_pairs = n * (n - 1)
    # Across tasks: all pairs (a in t, b in s), t != s.
    off = 1.0 - jnp.eye(num_tasks)
    stats = {
        "mask/overlap_within_task": Average(within_shared.sum() / k, within_pairs.sum()),
        "mask/overlap_across_tasks": Average((gram * off).sum() / k,
                                             (jnp.outer(n, n) * off).sum()),
        # kept by any example of the batch, mean over layers
        "mask/units_used_frac": Average.of(kept.max(axis=0).mean()),
    }
    if lam is not None:
        stats["mask/lambda_kept_mean"] = Average((lam * kept).sum(), kept.sum())
    return stats
