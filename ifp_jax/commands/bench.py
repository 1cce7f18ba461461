"""`ifp bench ...`: the benchmarks of ifp_jax/benchmarks/, which print ratios measured side by
side in one run.

    ifp bench train [EXPERIMENT] [section.key=value ...] [--peer] [--json] [--steps N] [--warmup N]
    ifp bench infer [section.key=value ...] [--sizes 2m 50m] [--no-peer] [--json]
    ifp bench data [--gb 2] [--workers 0 1 2] [--prepare-processes N] [--json]
    ifp bench ckpt [--gb 2] [--storage disk bucket] [--repeats 3] [--json]
    ifp bench eval [EXPERIMENT] [section.key=value ...] [--batch-size 256] [--mask M] [--json]
"""

from __future__ import annotations

import argparse
import json


def _cmd_bench_train(args) -> None:
    from ifp_jax.benchmarks.train_bench import default_config, format_report, run_train_bench
    from ifp_jax.commands.resolve import optional_name, registered
    from ifp_jax.config import apply_overrides
    experiment, overrides = optional_name(args.experiment, args.overrides)
    cfg = (registered(experiment, overrides) if experiment
           else apply_overrides(default_config(), overrides))
    result = run_train_bench(cfg, steps=args.steps, warmup=args.warmup, peer=args.peer,
                             matmul_n=args.matmul_n,
                             arm_cache=getattr(args, "arm_cache", None))  # set by tests
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def _cmd_bench_infer(args) -> None:
    from ifp_jax.benchmarks.infer_bench import format_report, run_infer_bench
    result = run_infer_bench(tuple(args.sizes), prompt_len=args.prompt_len,
                             new_tokens=args.new_tokens, keep_frac=args.keep_frac,
                             overrides=list(args.overrides), peer=not args.no_peer,
                             repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` (sub-commands `train`, `infer`) on the `ifp` sub-parsers."""
    bench = subparsers.add_parser("bench", help="speed benchmarks (train step vs matmul peak; "
                                                "generation latency vs the bandwidth bound)")
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
    t.add_argument("--warmup", type=int, default=3,
                   help="untimed steps per arm after compilation (default 3: on CPU the first "
                        "steps also grow the heap that later steps reuse)")
    t.add_argument("--matmul-n", type=int, default=2048, help="side of the peak matmul")
    t.set_defaults(fn=_cmd_bench_train)

    i = bsub.add_parser(
        "infer", help="the paper's Table 3 rows: dense-full, dense-small, IFP, transformers",
        description="Batch-1 generation of random-weight Llamas: selection, loading, prefill, "
                    "time to first token and decode tokens/s per arm, against the memory-"
                    "bandwidth bound measured in the same run. Progress goes to stderr.")
    i.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="applied to every size's config, e.g. model.tie_embeddings=true")
    i.add_argument("--sizes", nargs="+", default=["2m", "50m"],
                   help="model sizes among 2m, 50m, 135m (SmolLM2-135M's shape), 200m "
                        "(default: 2m 50m)")
    i.add_argument("--prompt-len", type=int, default=512)
    i.add_argument("--new-tokens", type=int, default=128)
    i.add_argument("--keep-frac", type=float, default=0.25,
                   help="FFN units kept per layer, as a fraction of d_ffn (default 0.25)")
    i.add_argument("--repeats", type=int, default=3, help="timed repeats per arm (median)")
    i.add_argument("--no-peer", action="store_true", help="skip the transformers arm")
    i.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    i.set_defaults(fn=_cmd_bench_infer)

    _add_bench_data_parser(bsub)
    _add_bench_ckpt_parser(bsub)
    _add_bench_eval_parser(bsub)
    return bench


def _cmd_bench_eval(args) -> None:
    from ifp_jax.benchmarks.eval_bench import format_report, run_eval_bench
    from ifp_jax.commands.resolve import optional_name, resolve
    experiment, overrides = optional_name(args.experiment, args.overrides,
                                          default="tiny_multiskill")
    result = run_eval_bench(resolve(experiment, overrides), batch_size=args.batch_size,
                            mask=args.mask)
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def _add_bench_eval_parser(bench_subparsers) -> None:
    e = bench_subparsers.add_parser(
        "eval", help="examples/s of a run's held-out evaluation (exact match, KV-cache greedy)",
        description="Evaluates random weights of an experiment's shape (train.init_llm_from="
                    "IMPORT_DIR takes an imported model's) on its mixture's instruction tasks, "
                    "twice in one process: the first call compiles, the second is what each "
                    "later evaluation of a run costs. Progress goes to stderr.")
    e.add_argument("experiment", nargs="?", default=None,
                   help="registered experiment (default: tiny_multiskill)")
    e.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="e.g. data.eval_examples_per_task=32")
    e.add_argument("--batch-size", type=int, default=256, help="rows per batch (evaluate's)")
    e.add_argument("--mask", choices=["per-input", "dense"], default="per-input",
                   help="per-input: the predictor selects each example's mask; dense: none")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_bench_eval)


def _cmd_bench_ckpt(args) -> None:
    from ifp_jax.benchmarks.ckpt_bench import format_report, run_ckpt_bench
    result = run_ckpt_bench(args.gb, storages=tuple(args.storage), repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def _add_bench_ckpt_parser(bench_subparsers) -> None:
    c = bench_subparsers.add_parser(
        "ckpt", help="checkpoint save / checksum / restore times, verification's share",
        description="Saves a state of --gb GB with the trainer's Checkpointer on local disk and "
                    "in a bucket of a local GCS emulator (fake-gcs-server, from the test "
                    "extra), records its checksums, and restores it with and without "
                    "verification. Bar: verification adds <= 15% to a restore.")
    c.add_argument("--gb", type=float, default=2.0, help="state size in GB (default 2)")
    c.add_argument("--storage", nargs="+", choices=["disk", "bucket"],
                   default=["disk", "bucket"])
    c.add_argument("--repeats", type=int, default=3, help="restores per setting (median)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_cmd_bench_ckpt)


def _cmd_bench_data(args) -> None:
    import os
    from ifp_jax.benchmarks.data_bench import format_report, run_data_bench
    cache = os.path.join(os.path.expanduser("~"), ".cache", "ifp_jax")
    tag = f"{args.gb:g}gb"
    result = run_data_bench(args.gb, args.corpus or os.path.join(cache, f"corpus_{tag}"),
                            args.prepared or os.path.join(cache, f"prepared_{tag}"),
                            workers=tuple(args.workers), batches=args.batches,
                            step_tokens_per_s=args.step_tokens_per_s,
                            prepare_processes=args.prepare_processes,
                            own_cache=args.prepared is None)
    print(json.dumps(result, indent=2) if args.json else format_report(result), flush=True)


def _add_bench_data_parser(bench_subparsers) -> None:
    b = bench_subparsers.add_parser(
        "data", help="the loader alone on a generated corpus: examples/s, tokens/s, memory",
        description="Generates a text corpus, prepares it (ifp data prepare), then draws "
                    "batches with 0, 1, 2 grain workers against the train step's tokens/s "
                    "(bench train's default shape, measured in the same run). Corpus and "
                    "prepared data are cached under ~/.cache/ifp_jax and reused.")
    b.add_argument("--gb", type=float, default=2.0, help="corpus size in GB (default 2)")
    b.add_argument("--corpus", default=None, help="corpus directory (default: cache)")
    b.add_argument("--prepared", default=None, help="prepared directory (default: cache)")
    b.add_argument("--prepare-processes", type=int, default=1)
    b.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    b.add_argument("--batches", type=int, default=2000, help="timed batches per setting")
    b.add_argument("--step-tokens-per-s", type=float, default=None,
                   help="compare with this train-step figure instead of measuring one")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_cmd_bench_data)
