"""`ifp export --workdir DIR (--prompt T | --instruction T | --task N) --out DIR`: the small dense
model one selection keeps, as HF / orbax / GGUF (ifp_jax/export/run.py)."""

from __future__ import annotations

import argparse

from ifp_jax.gguf_file.gguf_types import DEFAULT_GGUF_TYPE, GGUF_TYPES
from ifp_jax.export.run import FORMATS


def run(args) -> None:
    from ifp_jax.export.run import export_workdir
    export_workdir(args.workdir, args.out, prompt=args.prompt, instruction=args.instruction,
                   task=args.task, formats=tuple(args.format), eval_mask=args.eval_mask,
                   gguf_type=args.gguf_type, overwrite=args.overwrite)


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser(
        "export", help="the small dense model one prompt/instruction/task selects (HF, orbax, "
                       "GGUF)",
        description="Runs the run's predictor once on the text, keeps the top-k FFN units per "
                    "layer (lambda folded into W_down for the lambda mask) and writes a small "
                    "dense Llama to OUT/hf, OUT/orbax, OUT/gguf/model.gguf with OUT/export.json.")
    e.add_argument("--workdir", required=True, help="a trained run (its latest checkpoint)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", help="select for this user prompt")
    which.add_argument("--instruction", help="select for this task instruction (per-task mask)")
    which.add_argument("--task", help="select for this registered task's instruction text")
    e.add_argument("--out", required=True, help="output directory (refused if it exists)")
    e.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="formats to write (default: all)")
    e.add_argument("--eval-mask", choices=["hard", "lambda"], default=None,
                   help="0/1 top-k or lambda-scaled (default: the run's pruning.eval_mask)")
    e.add_argument("--gguf-type", choices=GGUF_TYPES, default=DEFAULT_GGUF_TYPE,
                   help="GGUF tensor type (norms stay f32; q4_0 keeps the output projection "
                        "q8_0); export.json reports the file size and the logit error vs f32 "
                        f"(default {DEFAULT_GGUF_TYPE})")
    e.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    e.set_defaults(fn=run)
    return e
