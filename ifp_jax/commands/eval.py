"""`ifp eval --workdir DIR [--mask M] [--eval-mask hard|lambda] [--split S] [--json]`: exact
match per instruction task and perplexity per text task of a trained run."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("eval", help="exact match per instruction task and perplexity per "
                                           "text task of a trained workdir (held out by default)")
    e.add_argument("--workdir", required=True)
    e.add_argument("--mask", choices=["per-input", "per-task", "static", "griffin", "dense"],
                   default=None,
                   help="per-input: the predictor reads each prompt; per-task: each task's "
                        "instruction text, once; static: a static-mask run's mask; griffin: "
                        "the LLM's top-k units by activation on the prompt; dense: none "
                        "(default: what the run was trained with)")
    e.add_argument("--eval-mask", choices=["hard", "lambda"], default=None)
    # Checked against the registered tasks' splits (one-line error), not argparse choices:
    # --help must not import SeqIO.
    e.add_argument("--split", default="validation", metavar="NAME",
                   help="the tasks' split to evaluate: validation (held out; the default) or "
                        "train; results then go to DIR/eval_<mask>_<eval mask>_<split>.json")
    e.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on stdout")
    e.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax.eval.run import evaluate_workdir
    evaluate_workdir(args.workdir, mask=args.mask, eval_mask=args.eval_mask,
                     as_json=args.json, split=args.split)
