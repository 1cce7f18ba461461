"""`ifp compare [COMPARISON] --workdir DIR [--seeds N] [overrides]`: IFP against its baselines
at equal budgets (ifp_jax/experiments/compare.py) -> DIR/report.md."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    cm = subparsers.add_parser("compare", help="IFP vs dense-full, dense-small, static and "
                                               "GRIFFIN at equal budgets -> DIR/report.md")
    cm.add_argument("comparison", nargs="?", default=None,
                    help="tiny_facts (default: embedded fact tables) or tiny_multiskill")
    cm.add_argument("--workdir", required=True)
    cm.add_argument("--seeds", type=int, default=2)
    cm.add_argument("--jobs", type=int, default=1,
                    help="seeds trained side by side in this many processes (default 1)")
    cm.add_argument("--only-seed", type=int, default=None, help=argparse.SUPPRESS)
    cm.add_argument("--distill-static", action="store_true",
                    help="also train the static arm with top-k KL distillation from the source "
                         "(the paper's prune+distill baseline)")
    cm.add_argument("overrides", nargs="*", metavar="section.key=value",
                    help="applied to every stage of every arm, e.g. data.mixture=ifp_user "
                         "data.jsonl_path=my_tasks")
    cm.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax.commands.resolve import optional_name
    from ifp_jax.experiments.compare import DEFAULT_COMPARISON, run_compare
    comparison, overrides = optional_name(args.comparison, args.overrides, DEFAULT_COMPARISON)
    run_compare(args.workdir, comparison, args.seeds, overrides,
                distill_static=args.distill_static, jobs=args.jobs, only_seed=args.only_seed)
