"""Mask-collapse signals, computed on device from a batch of masks.

Collapse (FINDINGS.md lesson 1) shows as: overlap of kept units *across* tasks as high as
*within* a task (the predictor ignores the prompt), few units ever kept, lambda of kept units far
from 1 (train/eval mismatch of lesson 3). Overlap of two examples a, b in one layer is
|kept_a ∩ kept_b| / k; random selection gives k / F.

All functions return per-batch *sums* and *counts* so they can be accumulated over micro-batches
and logging windows and divided on the host.
"""

from __future__ import annotations

import jax.numpy as jnp


def mask_statistics(mask: jnp.ndarray, lam: jnp.ndarray | None, task_id: jnp.ndarray,
                    num_tasks: int, k: int) -> dict:
    """Collapse statistics of one batch.

    Args:
      mask: [B, L, F] mask (non-zero = kept).
      lam: [B, L, F] SoftTopK lambda, or None (hard / given masks).
      task_id: [B] int task index in [0, num_tasks).
      num_tasks: N, static.
      k: kept units per layer.
    Returns: dict of scalars (sums and pair counts; see `finalize`).
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
    across_shared = (gram * off).sum()
    across_pairs = (jnp.outer(n, n) * off).sum()
    stats = {
        "overlap_within_sum": within_shared.sum() / k,
        "overlap_within_pairs": within_pairs.sum(),
        "overlap_across_sum": across_shared / k,
        "overlap_across_pairs": across_pairs,
        "units_used_frac": kept.max(axis=0).mean(),  # kept by any example, mean over layers
        "batches": jnp.ones(()),
    }
    if lam is not None:
        stats["lambda_kept_sum"] = (lam * kept).sum()
        stats["kept_count"] = kept.sum()
    return stats


def finalize(sums: dict) -> dict:
    """Host-side: turns accumulated sums into the reported metrics."""
    out = {}
    if sums.get("overlap_within_pairs", 0) > 0:
        out["mask/overlap_within_task"] = sums["overlap_within_sum"] / sums["overlap_within_pairs"]
    if sums.get("overlap_across_pairs", 0) > 0:
        out["mask/overlap_across_tasks"] = sums["overlap_across_sum"] / sums["overlap_across_pairs"]
    if sums.get("batches", 0) > 0:
        out["mask/units_used_frac"] = sums["units_used_frac"] / sums["batches"]
    if sums.get("kept_count", 0) > 0:
        out["mask/lambda_kept_mean"] = sums["lambda_kept_sum"] / sums["kept_count"]
    return out
