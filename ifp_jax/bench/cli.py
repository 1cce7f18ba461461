"""`ifp bench ...` sub-commands. Wire into ifp_jax/cli.py with:

    from ifp_jax.bench.cli import add_parser as add_bench_parser
    add_bench_parser(sub)          # in build_parser(), after the other sub-commands

    ifp bench train [EXPERIMENT] [section.key=value ...] [--peer] [--json] [--steps N] [--warmup N]
"""

from __future__ import annotations

import argparse
import json


def _cmd_bench_train(args) -> None:
    from ifp_jax.bench.train_bench import format_report, resolve_config, run_train_bench
    experiment, overrides = args.experiment, list(args.overrides)
    if experiment is not None and "=" in experiment:  # only overrides were given
        experiment, overrides = None, [experiment] + overrides
    cfg = resolve_config(experiment, overrides)
    result = run_train_bench(cfg, steps=args.steps, warmup=args.warmup, peer=args.peer,
                             matmul_n=args.matmul_n,
                             arm_cache=getattr(args, "arm_cache", None))  # set by tests
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` (with sub-command `train`) on the `ifp` sub-parsers."""
    bench = subparsers.add_parser("bench", help="speed benchmarks (train step vs matmul peak)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    t = bsub.add_parser(
        "train", help="dense vs IFP train-step speed, FLOP/s vs the matmul peak",
        description="Times the dense and the IFP (soft) train step of one LLM in one process "
                    "(interleaved, median), against XLA's measured f32 matmul peak. Default shape: "
                    "a ~50M Llama, batch 8 x 256. Progress goes to stderr.")
    t.add_argument("experiment", nargs="?", default=None,
                   help="registered experiment (default: the built-in bench_train_50m)")
    t.add_argument("overrides", nargs="*", metavar="section.key=value")
    t.add_argument("--peer", action="store_true",
                   help="also train the same Llama with Hugging Face transformers (PyTorch CPU)")
    t.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    t.add_argument("--steps", type=int, default=5, help="timed steps per arm (default 5)")
    t.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per arm after compilation (default 1)")
    t.add_argument("--matmul-n", type=int, default=2048, help="side of the peak matmul")
    t.set_defaults(fn=_cmd_bench_train)
    return bench
