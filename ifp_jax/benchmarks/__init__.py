"""Benchmarks behind `ifp bench`: figures measured side by side in one run, printed as ratios.

    train_bench.py  `ifp bench train`: dense vs IFP train step, against the matmul peak (peak.py)
                    and optionally transformers (torch_peer.py)
    infer_bench.py  `ifp bench infer`: the paper's Table 3 rows against the bandwidth bound
    data_bench.py   `ifp bench data`: the loader alone against the train step

Not part of the library: only the command layer imports them (tests/test_layout.py).
"""
