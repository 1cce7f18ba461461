"""The `ifp` command.

    ifp train EXPERIMENT --workdir DIR [section.key=value ...]   train (reruns resume)
        [--coordinator HOST:PORT --num-processes N --process-id I]   (multi-process; auto on
        [--profile-steps A:B]                                         TPU VMs and SLURM)
    ifp compile EXPERIMENT --topology NAME [overrides]            AOT-compile for a TPU topology
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
    ifp data prepare EXPERIMENT --out DIR [--mixture M] [overrides]  the mixture on disk, once
    ifp list                                                      registered experiments

User errors (config typos, unknown experiment/task, malformed data, incompatible workdir) print
one line `ifp: error: ...` and exit 2; set IFP_DEBUG=1 for the traceback.

Startup: a command imports only what it uses. `--help`, `list` and `config` import neither JAX
nor TensorFlow/SeqIO; TensorFlow comes in (quietly, see ifp_jax/tf_import.py) only with
the data pipeline. On a host with libtpu but no TPU, JAX is pinned to the CPU (_skip_absent_tpu)
so libtpu's warnings do not print; on a TPU VM nothing changes.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys


def _resolve(experiment: str, overrides: list[str], hardware: str | None = None):
    """Experiment config -> its defaults for `hardware` (if registered) -> the user's overrides
    -> the architecture of an imported HF model named by train.init_*_from (hf/imported.py)."""
    from ifp_jax import experiments
    from ifp_jax.config import apply_overrides
    cfg = apply_overrides(experiments.get(experiment, hardware=hardware), overrides)
    if cfg.train.init_llm_from or cfg.train.init_predictor_from:
        from ifp_jax.hf.imported import adopt_imports  # JAX/orbax only when a source is named
        cfg = adopt_imports(cfg)
    return cfg


def optional_name(name: str | None, overrides: list[str], default: str | None = None):
    """(name, overrides) of a command whose first positional (an experiment or comparison) is
    optional: with only overrides given, argparse puts the first of them in the name's slot."""
    if name is not None and "=" in name:
        return default, [name] + list(overrides)
    return (default if name is None else name), list(overrides)


def _this_hardware(flag: str | None) -> str | None:
    if flag:
        return flag
    import jax
    from ifp_jax.hardware import family_of_device
    return family_of_device(jax.devices()[0])


def _cmd_train(args) -> None:
    from ifp_jax import distributed
    cfg = _resolve(args.experiment, args.overrides)  # a typo fails before joining a job
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           init_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout)
    hardware = _this_hardware(args.hardware)
    if hardware:
        cfg = _resolve(args.experiment, args.overrides, hardware)
    from ifp_jax.data.tasks import check_mixture
    check_mixture(cfg.data)  # a data error leaves no half-made workdir behind
    from ifp_jax.eval.hook import EvaluateHeldOut
    from ifp_jax.train.hooks import parse_profile_steps
    from ifp_jax.train.loop import train
    hooks = [EvaluateHeldOut(every=cfg.train.eval_every)]
    if args.profile_steps:
        hooks.append(parse_profile_steps(args.profile_steps))
    train(cfg, args.workdir, hooks)


def _cmd_compile(args) -> None:
    # (main() has pinned this process to the CPU backend: compiling for a topology needs
    # libtpu's compiler, not a TPU, and must not take the chips of a job running here.)
    from ifp_jax.tpu_compile import run
    run(args.experiment, args.topology, args.overrides)


def _cmd_config(args) -> None:
    from ifp_jax.config import to_json
    print(to_json(_resolve(args.experiment, args.overrides, args.hardware)))


def _cmd_eval(args) -> None:
    from ifp_jax.eval.run import evaluate_workdir
    evaluate_workdir(args.workdir, mask=args.mask, eval_mask=args.eval_mask,
                     as_json=args.json, split=args.split)


def _cmd_demo(args) -> None:
    from ifp_jax.experiments.demo import run_demo
    run_demo(args.workdir, args.overrides)


def _cmd_compare(args) -> None:
    from ifp_jax.experiments.compare import DEFAULT_COMPARISON, run_compare
    comparison, overrides = optional_name(args.comparison, args.overrides, DEFAULT_COMPARISON)
    run_compare(args.workdir, comparison, args.seeds, overrides,
                distill_static=args.distill_static, jobs=args.jobs, only_seed=args.only_seed)


def _cmd_list(args) -> None:
    from ifp_jax import experiments
    print("\n".join(experiments.names()))


HARDWARE = ("v5p", "v5e", "v4", "v6e", "gpu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ifp", description="Instruction-following pruning in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an experiment (rerun on the same workdir resumes)")
    t.add_argument("experiment")
    t.add_argument("--workdir", required=True)
    t.add_argument("overrides", nargs="*", metavar="section.key=value")
    t.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address (env IFP_COORDINATOR); not needed on TPU VMs/SLURM")
    t.add_argument("--num-processes", type=int, default=None, help="env IFP_NUM_PROCESSES")
    t.add_argument("--process-id", type=int, default=None, help="env IFP_PROCESS_ID")
    t.add_argument("--init-timeout", type=int, default=120, metavar="SECONDS",
                   help="give up joining the job after this long (default 120)")
    t.add_argument("--heartbeat-timeout", type=int, default=60, metavar="SECONDS",
                   help="a process silent this long is declared dead and the job stops "
                        "(default 60)")
    t.add_argument("--profile-steps", default=None, metavar="A:B",
                   help="write a jax.profiler trace of steps A..B-1 to WORKDIR/profile")
    t.add_argument("--hardware", choices=HARDWARE, default=None,
                   help="use the experiment's defaults for this hardware (default: detected)")
    t.set_defaults(fn=_cmd_train)

    cp = sub.add_parser("compile", help="AOT-compile the train step for a TPU slice; per-chip "
                                        "memory and FLOPs (needs libtpu, no TPU)")
    cp.add_argument("experiment")
    cp.add_argument("--topology", required=True, metavar="NAME",
                    help="a TPU slice, e.g. v5p-128, v5e-256, v4-64, v6e-16")
    cp.add_argument("overrides", nargs="*", metavar="section.key=value")
    cp.set_defaults(fn=_cmd_compile)

    c = sub.add_parser("config", help="print the resolved config as JSON")
    c.add_argument("experiment")
    c.add_argument("overrides", nargs="*", metavar="section.key=value")
    c.add_argument("--hardware", choices=HARDWARE, default=None,
                   help="apply the experiment's defaults for this hardware")
    c.set_defaults(fn=_cmd_config)

    e = sub.add_parser("eval", help="exact match per instruction task and perplexity per text "
                                    "task of a trained workdir (held out by default)")
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
    e.set_defaults(fn=_cmd_eval)

    d = sub.add_parser("demo", help="dense source -> IFP CPT -> IFP SFT, then a per-task table")
    d.add_argument("--workdir", required=True)
    d.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="applied to every stage, e.g. train.compute_dtype=float32")
    d.set_defaults(fn=_cmd_demo)

    cm = sub.add_parser("compare", help="IFP vs dense-full, dense-small, static and GRIFFIN at "
                                         "equal budgets -> DIR/report.md")
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
    cm.set_defaults(fn=_cmd_compare)

    from ifp_jax.benchmarks.cli import add_parser as add_bench_parser
    from ifp_jax.data.cli import add_parser as add_data_parser
    from ifp_jax.export.cli import add_parser as add_export_parser
    from ifp_jax.hf.import_cli import add_parser as add_import_parser
    from ifp_jax.infer.cli import add_parser as add_generate_parser
    add_bench_parser(sub)
    add_import_parser(sub)
    add_export_parser(sub)
    add_generate_parser(sub)
    add_data_parser(sub)

    ls = sub.add_parser("list", help="list registered experiments")
    ls.set_defaults(fn=_cmd_list)
    return p


def _tpu_may_be_present() -> bool:
    """TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5e, v5p, v6e), and as
    PCI devices of Google's vendor id (what JAX itself counts)."""
    if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x1ae0":
                    return True
        except OSError:
            continue
    return False


def _skip_absent_tpu() -> None:
    """With libtpu installed (`ifp compile` uses it), JAX tries the TPU backend first even where
    there is none, and libtpu prints warnings about TPU worker hostnames and accelerator type
    before JAX falls back to the CPU. Rule: when JAX_PLATFORMS is unset, libtpu is installed, no
    TPU may be present (no /dev/accel*, no /dev/vfio, no Google PCI device) and no other JAX
    plugin (CUDA, ROCm) is installed, the CPU is the only backend JAX could end up on, so pin it:
    JAX_PLATFORMS=cpu. On a TPU VM (or with JAX_PLATFORMS or JAX_FORCE_TPU_INIT set) nothing
    changes and `ifp train` uses the TPU."""
    if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ:
        return
    if not (_installed("libtpu") or os.environ.get("TPU_LIBRARY_PATH")):
        return
    if _only_cpu_possible():
        os.environ["JAX_PLATFORMS"] = "cpu"


def _only_cpu_possible() -> bool:
    """No TPU may be present and no other JAX plugin (CUDA, ROCm) is installed."""
    return not (_tpu_may_be_present() or _other_jax_plugins())


def _cpu_is_the_backend() -> bool:
    """Whether JAX will compute on this host's CPU (JAX_PLATFORMS says so, or no accelerator is
    possible): only then do XLA:CPU's per-step buffers decide host memory behaviour."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return _only_cpu_possible()


def _use_compilation_cache() -> None:
    """JAX's persistent compilation cache for the commands users repeat on one model (`export`,
    `generate`): the second export of a run skips the selector's compile (about 1.3 s of the
    first). Environment variables, read when JAX starts, so a user's own settings win."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(base, "ifp_jax", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _other_jax_plugins() -> bool:
    """JAX's PJRT plugins (jax-cuda12-plugin, ROCm, ...): the `jax_plugins` namespace package or
    the `jax_plugins` entry-point group, where JAX itself looks for them."""
    if _installed("jax_plugins"):
        return True
    from importlib.metadata import entry_points
    return bool(entry_points(group="jax_plugins"))


def _is_user_error(e: Exception) -> bool:
    """Errors with a one-line message naming the fix: bad config or data, a missing file, a
    non-finite loss under train.nan_policy=stop, a checkpoint the disk could not take."""
    from ifp_jax.config import ConfigError
    from ifp_jax.errors import DataError
    from ifp_jax.train.run_errors import CheckpointWriteError, NonFiniteLossError
    return isinstance(e, (ConfigError, DataError, FileNotFoundError, CheckpointWriteError,
                          NonFiniteLossError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after --workdir; argparse binds the positional list before
    # the option, so the trailing `key=value` words arrive as extras.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if argv is None and args.command not in ("list", "config"):  # a program, not a test's call
        from ifp_jax import host_malloc
        # The cheap environment check first: the re-executed process skips the device scan.
        if host_malloc.useful() and _cpu_is_the_backend():
            host_malloc.reexec_with_tunables()  # once, before any work: buffers reused, THP
    if args.command == "compile":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # topology use only, no chips
    # Nothing here imports JAX, TensorFlow or SeqIO: each command imports what it uses
    # (ifp_jax.tf_import imports TensorFlow, quietly, for the commands that read data).
    if args.command not in ("list", "config"):  # the commands that never start JAX skip this
        _skip_absent_tpu()
    if args.command in ("export", "generate"):
        _use_compilation_cache()
    try:
        args.fn(args)
    except Exception as e:  # noqa: BLE001 - user errors become one line; the rest re-raise
        if not _is_user_error(e) or os.environ.get("IFP_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"ifp: error: {msg}\n")  # one write: other threads may be logging
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
