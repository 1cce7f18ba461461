"""Benchmarks: `ifp bench train` (dense vs IFP train step, matmul peak, optional HF peer)."""
