"""`ifp demo --workdir DIR [overrides]`: dense source -> IFP CPT -> IFP SFT on the embedded
mixture, then a per-task table (ifp_jax/experiments/demo.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    d = subparsers.add_parser("demo", help="dense source -> IFP CPT -> IFP SFT, then a per-task "
                                           "table")
    d.add_argument("--workdir", required=True)
    d.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="applied to every stage, e.g. train.compute_dtype=float32")
    d.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax.experiments.demo import run_demo
    run_demo(args.workdir, args.overrides)
