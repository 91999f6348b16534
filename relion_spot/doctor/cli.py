"""``relion-spot doctor [-c key=value ...]``: one line per finding with its fix; exit 1 when
anything blocks a deploy or a first job, 2 for bad settings or no credentials."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..estimate.cli import add_context_argument
from .checks import BLOCKER, OK, WARNING, Clients, Finding, check_docker, run_checks

MARKS = {OK: "ok     ", WARNING: "warning", BLOCKER: "BLOCKER"}


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "doctor",
        help="check the AWS account and region against the settings before deploying",
        description="Checks what a new account lacks: the G/VT and standard spot vCPU quotas, "
        "service-linked roles, instance types per availability zone, Lambda concurrency, the "
        "CDK bootstrap, cost allocation tags and a Docker engine for the deploy.",
    )
    add_context_argument(
        parser, "the settings you will deploy with, as for cdk deploy (e.g. -c gpus=1,4)"
    )
    parser.add_argument(
        "--no-docker", action="store_true", help="skip the Docker check (not deploying from here)"
    )
    parser.set_defaults(func=main)
    return parser


def clients_for(region: str) -> Clients:
    import boto3

    session = boto3.session.Session(region_name=region)
    return Clients(
        service_quotas=session.client("service-quotas"),
        iam=session.client("iam"),
        ec2=session.client("ec2"),
        ssm=session.client("ssm"),
        lambda_=session.client("lambda"),
        ce=session.client("ce", region_name="us-east-1"),
    )


def print_findings(findings: list[Finding], out: TextIO) -> None:
    for finding in findings:
        line = f"{MARKS[finding.level]}  {finding.check}: {finding.detail}"
        if finding.fix and finding.level != OK:
            line += f"\n           fix: {finding.fix}"
        print(line, file=out)
    blockers = sum(f.level == BLOCKER for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    verdict = "ready to deploy" if not blockers else "NOT ready: fix the blockers above"
    print(f"{verdict} ({blockers} blocker(s), {warnings} warning(s))", file=out)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from botocore.exceptions import NoCredentialsError, NoRegionError

    from ..settings import SettingsError, from_context

    out = out or sys.stdout
    try:
        context = dict(item.split("=", 1) for item in args.context if "=" in item)
        bad = [item for item in args.context if "=" not in item]
        if bad:
            print(f"relion-spot doctor: -c {bad[0]!r}: give KEY=VALUE", file=sys.stderr)
            return 2
        settings = from_context(context)
    except SettingsError as err:
        print(f"relion-spot doctor: {err}", file=sys.stderr)
        return 2
    try:
        findings = run_checks(clients_for(settings.region), settings)
    except (NoCredentialsError, NoRegionError) as err:
        print(f"relion-spot doctor: {err} (doctor checks the account your credentials name)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not args.no_docker:
        findings += check_docker(None, settings)  # type: ignore[arg-type]
    print_findings(findings, out)
    return 1 if any(f.level == BLOCKER for f in findings) else 0
