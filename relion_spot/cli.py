"""``relion-spot``: the lab's one command; each capability registers its own subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import demo
    from .budget import cli as budget_cli
    from .client import commands as cluster_commands
    from .client import pull as pull_cli
    from .client import stage as stage_cli
    from .cost import report as cost_report
    from .doctor import cli as doctor_cli
    from .estimate import cli as estimate_cli
    from .local import cli as local_cli
    from .selftest import cli as selftest_cli

    parser = argparse.ArgumentParser(
        prog="relion-spot",
        description="RELION 3D classification on a Slurm cluster of GPU spot nodes, in your own "
        "AWS account.",
    )
    parser.add_argument("--version", action="version", version=f"relion-spot {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(subparsers)
    estimate_cli.register(subparsers)
    doctor_cli.register(subparsers)
    cost_report.register(subparsers)
    cluster_commands.register(subparsers)
    pull_cli.register(subparsers)
    stage_cli.register(subparsers)
    selftest_cli.register(subparsers)
    budget_cli.register(subparsers)
    local_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
