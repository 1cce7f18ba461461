"""`ifp data ...`: registered on the `ifp` sub-parsers by ifp_jax/cli.py (add_parser)."""

from __future__ import annotations

import argparse


def _cmd_prepare(args) -> None:
    from ifp_jax.cli import _resolve
    from ifp_jax.data.prepare import prepare
    overrides = list(args.overrides) + ([f"data.mixture={args.mixture}"] if args.mixture else [])
    cfg = _resolve(args.experiment, overrides)
    manifest = prepare(cfg.data, cfg.predictor.max_prompt_len, args.out, args.process_index,
                       args.process_count, args.examples_per_file)
    if manifest is None:
        print(f"[ifp] part {args.process_index} of {args.process_count} done; {args.out} is "
              f"complete when every process has finished")
        return
    counts = {t: {s: e["examples"] for s, e in splits.items()}
              for t, splits in manifest["tasks"].items()}
    for task, splits in counts.items():
        print(f"[ifp] {task}: " + ", ".join(f"{n:,} {s}" for s, n in splits.items()))
    print(f"[ifp] prepared {args.out}; train with data.prepared_dir={args.out} "
          f"(and data.num_workers=N to assemble batches in N processes)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = subparsers.add_parser("data", help="prepare a mixture on disk once (ArrayRecord) for "
                                           "training to stream")
    sub = d.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser(
        "prepare", help="tokenize and format every task of an experiment's mixture once",
        description="Runs each SeqIO task's preprocessing for the experiment's data and "
                    "predictor settings (seq_len, vocabularies, CPT chunks, predictor prompt "
                    "length) and writes ArrayRecord files plus OUT/manifest.json. Resumable; "
                    "with --process-count N, N processes prepare disjoint shards.")
    p.add_argument("experiment", help="a registered experiment: its data.* and predictor "
                                      "prompt length shape the prepared rows")
    p.add_argument("--out", required=True)
    p.add_argument("--mixture", default=None, help="shortcut for data.mixture=NAME")
    p.add_argument("--process-index", type=int, default=0)
    p.add_argument("--process-count", type=int, default=1)
    p.add_argument("--examples-per-file", type=int, default=100_000)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(fn=_cmd_prepare)
    return d
