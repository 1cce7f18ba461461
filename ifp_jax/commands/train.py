"""`ifp train EXPERIMENT --workdir DIR [overrides]`: train; a rerun on the same workdir resumes."""

from __future__ import annotations

import os

from ifp_jax.commands.resolve import HARDWARE, resolve, this_hardware


def add_parser(subparsers) -> None:
    t = subparsers.add_parser("train", help="train an experiment (rerun on the same workdir "
                                            "resumes)")
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
    t.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax import distributed
    cfg = resolve(args.experiment, args.overrides)  # a typo fails before joining a job
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           init_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout)
    hardware = this_hardware(args.hardware)
    if hardware:
        cfg = resolve(args.experiment, args.overrides, hardware)
    use_compile_cache(cfg.train.compile_cache_dir, args.workdir)
    from ifp_jax.data.tasks import check_mixture
    check_mixture(cfg.data)  # a data error leaves no half-made workdir behind
    from ifp_jax.eval.hook import EvaluateHeldOut
    from ifp_jax.train.hooks import parse_profile_steps
    from ifp_jax.train.loop import train
    hooks = [EvaluateHeldOut(every=cfg.train.eval_every)]
    if args.profile_steps:
        hooks.append(parse_profile_steps(args.profile_steps))
    train(cfg, args.workdir, hooks)


def use_compile_cache(path: str, workdir: str) -> None:
    """train.compile_cache_dir -> JAX's persistent compilation cache, so a restarted run (after
    a preemption, or to extend train.steps) loads its compiled step instead of compiling it for
    minutes. Set before the first compile: JAX opens its cache once, at the first compile of
    the process. "default": WORKDIR/xla_cache for a gs:// workdir (a preempted job comes back on
    new VMs, whose local disks are empty), else platform.default_compilation_cache_dir(); "":
    off. The user's JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS and
    JAX_ENABLE_COMPILATION_CACHE=false win."""
    import jax
    from ifp_jax import platform
    from ifp_jax.storage import paths
    if not path:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if path == "default":
        path = (paths.join(paths.absolute(workdir), "xla_cache") if paths.is_remote(workdir)
                else platform.default_compilation_cache_dir())
    jax.config.update("jax_compilation_cache_dir", path)  # local, or gs://... (etils.epath)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          platform.CACHE_MIN_COMPILE_SECONDS)
