"""``relion-spot budget``: what a cluster's month has cost, its cap, and what is left.

    relion-spot budget --stack relion-spot-gpu1 [--month 2026-11] [--json]

The spend is the month's priced jobs (as ``relion-spot cost --month`` adds them up); a job still
running counts once its attempt ends and the cost Lambda prices it. The controller's check
before each launch adds the running jobs and an hour ahead (relion_spot.budget.forecast).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from ..client.cluster import aws_errors
from ..client.commands import Context, UsageError, _common, _runner
from .ledger import month_of, month_spent

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def budget_command(args: argparse.Namespace, context: Context) -> int:
    month = args.month or month_of(time.time())
    if not _MONTH.match(month):
        raise UsageError(f"--month {month!r} is not a month: expected YYYY-MM, e.g. 2026-11")
    handle = context.handle
    raw_cap = handle.monthly_budget_usd
    cap = float(raw_cap) if raw_cap and raw_cap != "none" else None
    with aws_errors(f"reading the job costs of {handle.cluster_name}"):
        spent = month_spent(
            context.client("dynamodb"), handle.costs_table, handle.cluster_name, month
        )
    left = None if cap is None else round(cap - spent, 2)
    report: dict[str, Any] = {
        "cluster": handle.cluster_name,
        "month": month,
        "cap_usd": cap,
        "spent_usd": round(spent, 2),
        "left_usd": left,
    }
    if args.json:
        print(json.dumps(report), file=context.out)
        return 0
    lines = [
        f"cluster {handle.cluster_name}, {month} (UTC)",
        f"  cap    {'none (monthly_budget_usd not set)' if cap is None else f'${cap:,.2f}'}",
        f"  spent  ${spent:,.2f}  (priced jobs; a running job counts once its attempt ends)",
    ]
    if left is not None:
        state = (
            " - launches stop; waiting jobs are held with the reason 'budget'" if left <= 0 else ""
        )
        lines.append(f"  left   ${left:,.2f}{state}")
    print("\n".join(lines), file=context.out)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "budget", help="a cluster's spend this month, its cap and what is left"
    )
    _common(parser)
    parser.add_argument("--month", help="YYYY-MM (UTC; default: this month)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_runner("budget", budget_command))
