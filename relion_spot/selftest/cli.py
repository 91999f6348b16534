"""``relion-spot selftest --stack S [--gpu] [--interrupt]``: the argument parsing and exit
status; the sequence is ``flow``, the AWS calls ``cloud`` (or ``local`` for ``--stack local``),
the lines ``display``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..client.cluster import STACK_ENV
from .flow import SelftestError, SelftestOptions, SelftestResult, run
from .verdicts import FAILED

LOCAL_STACK = "local"
ITERATIONS = (6, 10)
"""From the iteration its set classifies by (accuracy >= 0.90 with margin, flow.DATA_SET)."""


class UsageError(ValueError):
    """A bad option; the message names it and what is accepted."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "selftest",
        help="prove a deployed cluster works: permissions, a tiny GPU job, a spot interruption",
        description="Shows the controller's permission checks (EC2 dry runs); with --gpu "
        "submits a tiny ground-truthed Class3D through the intake; with --interrupt sends a "
        "spot interruption (AWS FIS) once an iteration is done, and checks the job resumes on a "
        "new node and completes. --stack local runs it all on the embedded cloud.",
    )
    parser.add_argument(
        "--stack",
        default=os.environ.get(STACK_ENV),
        help=f"the cluster stack, or 'local' for the embedded cloud (default ${STACK_ENV})",
    )
    parser.add_argument("--region", help="the stack's AWS region (default: your AWS config)")
    parser.add_argument("--gpu", action="store_true", help="run a tiny Class3D on a GPU node")
    parser.add_argument(
        "--interrupt", action="store_true", help="interrupt its node mid-run (needs --gpu)"
    )
    parser.add_argument("--iterations", default="6", help="iterations of the job (6 to 10)")
    parser.add_argument("--budget", help="refuse when the run could cost more than this many USD")
    parser.add_argument("--work-dir", type=Path, help="--stack local only: where it works")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.set_defaults(func=main)
    return parser


def options_from(args: argparse.Namespace) -> SelftestOptions:
    if not args.stack:
        raise UsageError(f"which cluster? give --stack <stack name> or 'local', or set {STACK_ENV}")
    if args.interrupt and not args.gpu:
        raise UsageError("--interrupt interrupts the --gpu job's node: give --gpu too")
    low, high = ITERATIONS
    if not str(args.iterations).isdigit() or not low <= int(args.iterations) <= high:
        raise UsageError(f"--iterations {args.iterations!r}: give a whole number {low} to {high}")
    budget = None
    if args.budget is not None:
        try:
            budget = float(args.budget)
        except ValueError:
            budget = -1.0
        if not 0 < budget < 1e6:
            raise UsageError(f"--budget {args.budget!r}: give a positive amount of USD, e.g. 2")
    if args.work_dir is not None and args.stack != LOCAL_STACK:
        raise UsageError("--work-dir is for --stack local only")
    return SelftestOptions(
        gpu=args.gpu,
        interrupt=args.interrupt,
        iterations=int(args.iterations),
        budget_usd=budget,
    )


def exit_status(result: SelftestResult) -> int:
    if result.refused or not result.permissions_ok:
        return 1
    return 1 if any(v.result == FAILED for v in result.verdicts) else 0


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from .display import Display, as_json

    out, err = out or sys.stdout, err or sys.stderr
    try:
        options = options_from(args)
    except UsageError as error:
        print(f"relion-spot selftest: {error}", file=err)
        return 2
    logging.basicConfig(level=logging.WARNING)
    display = Display(err if args.json else out)
    try:
        result = _run(args, options, display)
    except SelftestError as error:
        print(f"relion-spot selftest: {error}", file=err)
        return 1
    display.summary(result)
    if args.json:
        print(as_json(result), file=out)
    return exit_status(result)


def _run(args: argparse.Namespace, options: SelftestOptions, display: Any) -> SelftestResult:
    if args.stack == LOCAL_STACK:
        from .local import DEFAULT_WORK_DIR, embedded_backend

        with embedded_backend(args.work_dir or DEFAULT_WORK_DIR) as backend:
            return run(backend, options, display.report)
    import boto3

    from ..client.cluster import ClusterError, aws_errors, find_cluster
    from .cloud import AwsBackend, stack_outputs

    session = boto3.session.Session(region_name=args.region or None)
    try:
        handle = find_cluster(args.stack, session=session)
        with aws_errors(f"reading stack {args.stack}"):
            outputs = stack_outputs(session, args.stack)
        with aws_errors("running the selftest"):
            return run(AwsBackend(handle, session, outputs), options, display.report)
    except ClusterError as error:
        raise SelftestError(str(error)) from None
