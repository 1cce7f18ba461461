"""`ifp list`: the registered experiments, one per line."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    ls = subparsers.add_parser("list", help="list registered experiments")
    ls.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax import experiments
    print("\n".join(experiments.names()))
