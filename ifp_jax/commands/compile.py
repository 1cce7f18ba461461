"""`ifp compile EXPERIMENT --topology NAME [--num-slices N] [overrides]`: AOT-compile the train
step for a TPU slice (or N of them, multislice) on this host (libtpu's compiler, no TPU) and
print the mesh, per-chip memory and FLOPs."""

from __future__ import annotations

import os


def add_parser(subparsers) -> None:
    cp = subparsers.add_parser("compile", help="AOT-compile the train step for a TPU slice; "
                                               "per-chip memory and FLOPs (needs libtpu, no TPU)")
    cp.add_argument("experiment")
    cp.add_argument("--topology", required=True, metavar="NAME",
                    help="a TPU slice, e.g. v5p-128, v5e-256, v4-64, v6e-16")
    cp.add_argument("--num-slices", type=int, default=1, metavar="N",
                    help="multislice: N such slices joined over DCN (sets mesh.dcn_data=N)")
    cp.add_argument("overrides", nargs="*", metavar="section.key=value")
    cp.set_defaults(fn=run)


def prepare_environment() -> None:
    """Compiling for a topology needs libtpu's compiler, not a TPU, and must not take the chips
    of a job running here: JAX computes on the CPU, libtpu may be loaded beside another."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def run(args):
    from ifp_jax.commands.resolve import registered
    from ifp_jax.config import ConfigError
    from ifp_jax.hardware import parse_slice
    from ifp_jax.tpu_compile import compile_for_slice, does_not_fit_message, format_report
    s = parse_slice(args.topology)
    if args.num_slices < 1:
        raise ConfigError(f"--num-slices {args.num_slices} must be >= 1")
    # The slice count is a fact of the topology asked for; the user's overrides still come last.
    slices = [f"mesh.dcn_data={args.num_slices}"] if args.num_slices > 1 else []
    # The experiment's own shapes: compiling for a slice reads no import directory.
    cfg = registered(args.experiment, slices + list(args.overrides), hardware=s.family.name)
    report = compile_for_slice(cfg, s, args.num_slices)
    print(format_report(report, cfg), flush=True)
    if not report.fits:
        raise ConfigError(does_not_fit_message(report, cfg))
    return report
