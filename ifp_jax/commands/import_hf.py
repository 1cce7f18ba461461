"""`ifp import-hf SRC --out DIR [--as llm|predictor] [--layers N] [--overwrite]`: a Hugging
Face Llama checkpoint (or a llama.cpp GGUF) as an import directory for train.init_llm_from /
init_predictor_from (ifp_jax/hf/import_hf.py does the work)."""

from __future__ import annotations

import argparse

from ifp_jax.hf.import_layout import KINDS


def run(args) -> None:
    from ifp_jax.hf.import_hf import import_hf
    import_hf(args.src, args.out, kind=args.kind, overwrite=args.overwrite,
              layers=args.layers)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `import-hf` on the `ifp` sub-parsers."""
    p = subparsers.add_parser(
        "import-hf", help="import a Hugging Face Llama checkpoint for train.init_*_from",
        description="Reads SRC (config.json + model.safetensors or sharded safetensors, "
                    "optional tokenizer.json; or a llama.cpp MODEL.gguf, local or gs://, "
                    "dequantised, its tokenizer rebuilt) and writes DIR, usable as train.init_llm_from "
                    "(--as llm) or train.init_predictor_from (either kind); the experiment then "
                    "takes the model's architecture and tokenizer from DIR.")
    p.add_argument("src", metavar="SRC", help="a Hugging Face model directory or a .gguf file")
    p.add_argument("--out", required=True, metavar="DIR", help="the import directory to write")
    p.add_argument("--as", dest="kind", choices=KINDS, default="llm",
                   help="what the model will initialise (default llm)")
    p.add_argument("--layers", type=int, default=None, metavar="N",
                   help="keep only the first N decoder layers (a predictor backbone cut from a "
                        "bigger model; default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import at DIR")
    p.set_defaults(fn=run)
    return p
