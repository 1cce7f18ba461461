"""The `ifp` command.

    ifp train EXPERIMENT --workdir DIR [section.key=value ...]   train (reruns resume)
        [--coordinator HOST:PORT --num-processes N --process-id I]   (multi-process; auto on
        [--profile-steps A:B]                                         TPU VMs and SLURM)
    ifp compile EXPERIMENT --topology NAME [--num-slices N] [overrides]  AOT-compile for TPU slices
    ifp bench train [EXPERIMENT] [overrides] [--peer] [--json]    dense vs IFP step, vs transformers
    ifp bench infer [overrides] [--sizes 2m 50m] [--json]         Table 3: selection, loading, decode
    ifp import-hf SRC --out DIR [--as llm|predictor]              a HF Llama checkpoint + tokenizer
    ifp export --workdir DIR (--prompt T|--instruction T|--task N) --out DIR [--format hf orbax gguf]
    ifp generate (--workdir DIR | --model DIR) --prompt TEXT      stream a completion (KV cache)
    ifp config EXPERIMENT [section.key=value ...]                 print the resolved config
    ifp eval --workdir DIR [--mask per-input|per-task|static|griffin|dense] [--eval-mask M]
             [--split NAME] [--json]             exact match per task, perplexity per text task
    ifp demo --workdir DIR                                        the embedded CPU pipeline
    ifp compare [COMPARISON] --workdir DIR [--seeds N] [overrides] IFP vs baselines, equal budgets
    ifp smollm2 --workdir DIR [--reduced] [overrides]            SmolLM2 pruned per task, llama.cpp
    ifp data prepare EXPERIMENT --out DIR [--mixture M] [overrides]  the mixture on disk, once
    ifp list                                                      registered experiments

User errors (config typos, unknown experiment/task, malformed data, incompatible workdir) print
one line `ifp: error: ...` and exit 2; set IFP_DEBUG=1 for the traceback.

Before a command runs, ifp_jax/platform.py settles what JAX may start on: on a host with libtpu
but no TPU, JAX is pinned to the CPU so libtpu's warnings do not print (on a TPU VM nothing
changes); where JAX computes on the CPU the process re-executes once with malloc tunables.
"""

from __future__ import annotations

import argparse
import os
import sys

from ifp_jax import platform
from ifp_jax.commands import (bench, compare, compile, data, demo, eval, export, generate,
                              import_hf, list_experiments, show_config, smollm2, train)

# In the order `ifp --help` lists them.
COMMANDS = (train, compile, show_config, eval, demo, compare, smollm2, bench, import_hf, export,
            generate, data, list_experiments)
# The commands that never start JAX: no device probing, no malloc re-exec.
WITHOUT_JAX = ("list", "config")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ifp", description="Instruction-following pruning in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def is_user_error(e: Exception) -> bool:
    """Errors with a one-line message naming the fix: bad config or data, a missing file, a
    non-finite loss under train.nan_policy=stop, a checkpoint the disk could not take, a bucket
    that cannot be used."""
    from ifp_jax.config import ConfigError
    from ifp_jax.errors import DataError, StorageError
    from ifp_jax.train.run_errors import CheckpointWriteError, NonFiniteLossError
    return isinstance(e, (ConfigError, DataError, StorageError, FileNotFoundError,
                          CheckpointWriteError, NonFiniteLossError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after --workdir; argparse binds the positional list before
    # the option, so the trailing `key=value` words arrive as extras.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if argv is None and args.command not in WITHOUT_JAX:  # a program, not a test's call
        platform.tune_malloc_if_cpu()  # once, before any work: buffers reused, THP
    if args.command == "compile":
        compile.prepare_environment()
    # Nothing here imports JAX, TensorFlow or SeqIO: each command imports what it uses
    # (ifp_jax.tf_import imports TensorFlow, quietly, for the commands that read data).
    if args.command not in WITHOUT_JAX:
        platform.pin_cpu_without_tpu()
    if args.command in ("export", "generate"):
        platform.use_compilation_cache()
    try:
        args.fn(args)
    except Exception as e:  # noqa: BLE001 - user errors become one line; the rest re-raise
        if not is_user_error(e) or os.environ.get("IFP_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"ifp: error: {msg}\n")  # one write: other threads may be logging
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
