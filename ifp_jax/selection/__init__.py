"""Which FFN units are kept: every way the project chooses a mask, in one place.

    prompt.py       text -> predictor tokens [1, P]: the one keep-the-last-P-tokens rule (NumPy
                    only; the data pipeline uses it too)
    units.py        Selection (kept unit indices [L, k] and their scales) and Selector: one text
                    -> its units, jitted once (export, serving, `ifp generate`)
    batch_masks.py  masks [B, L, F] for a batch inside jit: per input (the predictor on each
                    prompt), per task (the predictor once on each task's instruction text),
                    static (learned input-independent scores), GRIFFIN (the LLM's own top-k
                    units by activation on the prompt), dense (none) — train-time and
                    `ifp eval` evaluation

The model's own forward piece (predictor -> SoftTopK inside the train step) is
`IFPModel.select`; everything here builds on it. Import the modules themselves.
"""
