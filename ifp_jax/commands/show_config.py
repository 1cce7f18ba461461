"""`ifp config EXPERIMENT [overrides] [--hardware H]`: print the resolved config as JSON."""

from __future__ import annotations

from ifp_jax.commands.resolve import HARDWARE, resolve


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("config", help="print the resolved config as JSON")
    c.add_argument("experiment")
    c.add_argument("overrides", nargs="*", metavar="section.key=value")
    c.add_argument("--hardware", choices=HARDWARE, default=None,
                   help="apply the experiment's defaults for this hardware")
    c.set_defaults(fn=run)


def run(args) -> None:
    from ifp_jax.config import to_json
    print(to_json(resolve(args.experiment, args.overrides, args.hardware)))
