"""Typed metric values that carry their own reduction (after t5x's `clu.metrics`).

A train or eval step returns `{name: Metric}`; values from micro-batches, steps and logging
windows are combined with `merge` (on device, inside `jit` too) and turned into numbers once,
on the host, with `compute`. Every reduction here is additive, so `merge` is elementwise `+`;
the reduction lives in `compute`, next to the value, never in another file.

Worked example: the balance loss of 2 micro-batches is `Average(b1, 1).merge(Average(b2, 1))`
= `Average(b1 + b2, 2)`, which computes to the mean `(b1 + b2) / 2` whatever the number of
micro-batches or steps merged.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Average:
    """total / count; `total` and `count` may be vectors (e.g. one entry per task)."""

    total: jax.Array
    count: jax.Array

    @classmethod
    def of(cls, value: jax.Array) -> "Average":
        """One observation of `value` (weight 1)."""
        value = jnp.asarray(value, jnp.float32)
        return cls(total=value, count=jnp.ones_like(value))

    def merge(self, other: "Average") -> "Average":
        return Average(self.total + other.total, self.count + other.count)

    def compute(self) -> np.ndarray:
        total, count = np.asarray(self.total, np.float64), np.asarray(self.count, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


@flax.struct.dataclass
class Sum:
    """A count or total that adds up (e.g. truncated prompts, skipped steps)."""

    value: jax.Array

    def merge(self, other: "Sum") -> "Sum":
        return Sum(self.value + other.value)

    def compute(self) -> np.ndarray:
        return np.asarray(self.value, np.float64)


Metric = Average | Sum


def merge(a: Mapping[str, Metric] | None, b: Mapping[str, Metric]) -> dict[str, Metric]:
    """Merges two metric dicts with the same keys; `a=None` starts a new accumulation."""
    if a is None:
        return dict(b)
    if set(a) != set(b):
        raise ValueError(f"metric keys differ: {sorted(set(a) ^ set(b))}")
    return {k: a[k].merge(b[k]) for k in a}


def compute(metrics: Mapping[str, Metric], vector_names: Mapping[str, list[str]] | None = None
            ) -> dict[str, float]:
    """Host-side numbers. A vector metric `key` expands to `key/<name>` using `vector_names[key]`
    (entries with no observations, i.e. NaN, are left out)."""
    out: dict[str, Any] = {}
    for key, metric in jax.device_get(dict(metrics)).items():
        value = metric.compute()
        if value.ndim == 0:
            out[key] = float(value)
            continue
        names = (vector_names or {}).get(key) or [str(i) for i in range(value.shape[0])]
        for name, v in zip(names, value):
            if np.isfinite(v):
                out[f"{key}/{name}"] = float(v)
    return out
