"""`ifp data prepare|inspect|example-tasks`: the mixture on disk once, what training sees, and
the embedded skills written as a user mixture."""

from __future__ import annotations

import argparse


def _cmd_prepare(args) -> None:
    from ifp_jax.data.prepare import prepare
    cfg = _resolve_data_args(args)
    manifest = prepare(cfg.data, cfg.predictor.max_prompt_len, args.out,
                       process_index=args.process_index, process_count=args.process_count,
                       examples_per_file=args.examples_per_file)
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


def _resolve_data_args(args):
    from ifp_jax.commands.resolve import optional_name, resolve
    from ifp_jax.config import ExperimentConfig, apply_overrides
    experiment, overrides = optional_name(args.experiment, args.overrides)
    overrides += [f"data.mixture={args.mixture}"] if args.mixture else []
    return (resolve(experiment, overrides) if experiment
            else apply_overrides(ExperimentConfig(), overrides))


def _cmd_inspect(args) -> None:
    from ifp_jax.config import replace
    from ifp_jax.data.inspect import inspect
    cfg = _resolve_data_args(args)
    data = replace(cfg.data, prepared_dir=args.prepared) if args.prepared else cfg.data
    print(inspect(data, cfg.predictor.max_prompt_len, args.split, args.examples))


def _cmd_example_tasks(args) -> None:
    from ifp_jax.data.example_tasks import write_example_tasks
    paths = write_example_tasks(args.out, args.tasks, args.examples, args.seed)
    print(f"[ifp] wrote {len(paths)} task files and manifest.json to {args.out}; use them with "
          f"data.mixture=ifp_user data.jsonl_path={args.out}")


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
    p.add_argument("experiment", nargs="?", default=None,
                   help="a registered experiment: its data.* and predictor prompt length shape "
                        "the prepared rows (default: the config defaults + overrides)")
    p.add_argument("--out", required=True)
    p.add_argument("--mixture", default=None, help="shortcut for data.mixture=NAME")
    p.add_argument("--process-index", type=int, default=0)
    p.add_argument("--process-count", type=int, default=1)
    p.add_argument("--examples-per-file", type=int, default=100_000)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(fn=_cmd_prepare)

    i = sub.add_parser(
        "inspect", help="per task: counts, token statistics, truncation, decoded examples",
        description="What training sees for an experiment's mixture (from memory, or from "
                    "--prepared DIR): per task the example count, tokens per example, loss "
                    "tokens, truncation counts, and examples decoded as text with the "
                    "predictor's view and the loss mask.")
    i.add_argument("experiment", nargs="?", default=None)
    i.add_argument("--prepared", default=None, help="a prepared directory to read instead")
    i.add_argument("--mixture", default=None, help="shortcut for data.mixture=NAME")
    i.add_argument("--split", default="train")
    i.add_argument("--examples", type=int, default=2, help="decoded examples per task")
    i.add_argument("overrides", nargs="*", metavar="section.key=value")
    i.set_defaults(fn=_cmd_inspect)

    e = sub.add_parser(
        "example-tasks", help="write embedded skills as a user mixture: one JSONL per task",
        description="Writes OUT/<skill>.jsonl ({prompt, response} lines; every 20th an input "
                    "held out from training) and OUT/manifest.json (instruction, rate): the "
                    "layout of data.jsonl_path, as a template or a mixture to try.")
    e.add_argument("--out", required=True)
    e.add_argument("--tasks", type=int, default=10, help="number of skills (default 10)")
    e.add_argument("--examples", type=int, default=2000, help="lines per task file")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=_cmd_example_tasks)
    return d
