"""Serving a model to a user: a trained run (its predictor picks the mask once per prompt) or an
exported small model.

    server.py     PrunedServer: selection -> loading -> generation, each step timed; the small
                  models cached by their selection
    generator.py  what `ifp generate` generates from: a run with the prompt's mask, or an export

Built on infer/ (the decoding kernels), selection/ and export/; nothing below imports this.
Import the modules themselves.
"""
