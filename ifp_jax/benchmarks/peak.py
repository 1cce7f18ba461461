"""Measured f32 matmul peak of this machine: XLA (jitted square matmul) and torch.matmul.

The figure is the best of several timed runs of one large square product (2 n^3 FLOPs): the
rate the backend's GEMM reaches when nothing else limits it. Model FLOP/s are reported as a
fraction of it.
"""

from __future__ import annotations

import time

import numpy as np


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class XlaMatmulPeak:
    """Jitted [n, n] @ [n, n] f32; `sample()` times it `repeats` times and keeps the best."""

    def __init__(self, n: int = 2048, dtype: str = "float32"):
        import jax
        import jax.numpy as jnp
        rng = np.random.default_rng(0)
        self.n = n
        self.a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32).astype(dtype))
        self.b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32).astype(dtype))
        self.fn = jax.jit(jnp.matmul).lower(self.a, self.b).compile()
        self.fn(self.a, self.b).block_until_ready()
        self.best_s = float("inf")

    def sample(self, repeats: int = 3) -> float:
        s = _best(lambda: self.fn(self.a, self.b).block_until_ready(), repeats)
        self.best_s = min(self.best_s, s)
        return self.flops_per_s

    @property
    def flops_per_s(self) -> float:
        return 2.0 * self.n ** 3 / self.best_s


class TorchMatmulPeak:
    """torch.matmul of two [n, n] f32 CPU tensors (MKL / oneDNN / OpenBLAS, whatever torch has)."""

    def __init__(self, n: int = 2048):
        import torch
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.a = torch.randn(n, n, generator=g)
        self.b = torch.randn(n, n, generator=g)
        self._torch = torch
        torch.matmul(self.a, self.b)
        self.best_s = float("inf")

    def sample(self, repeats: int = 3) -> float:
        with self._torch.no_grad():
            s = _best(lambda: self._torch.matmul(self.a, self.b), repeats)
        self.best_s = min(self.best_s, s)
        return self.flops_per_s

    @property
    def flops_per_s(self) -> float:
        return 2.0 * self.n ** 3 / self.best_s
