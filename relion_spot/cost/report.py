"""``relion-spot cost``: what each job cost, per job, per user or per month; table, CSV or JSON.

Reads the job cost table the cost Lambda writes (estimate, reclaimed share, and the billed
figure from Cost Explorer once it is known). ``register(subparsers)`` plugs the command into a
larger CLI; ``python -m relion_spot.cost.report`` runs it alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from relion_spot.client.terminal import cell, printable
from relion_spot.cost import config
from relion_spot.cost.months import month_bounds
from relion_spot.cost.pricing import COMPONENTS, GIB
from relion_spot.cost.store import CostStore

COMPONENT_COLUMNS = tuple(f"{c}_usd" for c in COMPONENTS)
RECLAIMED_COMPONENT_COLUMNS = tuple(f"reclaimed_{c}_usd" for c in COMPONENTS)
GROUPINGS = ("job", "user", "month")
FORMATS = ("table", "csv", "json")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

JOB_COLUMNS = (
    "job_id",
    "user",
    "job_name",
    "month",
    "attempts",
    "instance_types",
    *COMPONENT_COLUMNS,
    "storage_read_gib",
    "storage_write_gib",
    "estimate_usd",
    "reclaimed_usd",
    "reclaimed_share",
    *RECLAIMED_COMPONENT_COLUMNS,
    "billed_usd",
    "flags",
)
"""Components: compute (instance time x spot price), EBS, and storage I/O (bytes the job's
nodes moved on the shared file system x its per-GiB rates); each also as its reclaimed part."""
GROUP_COLUMNS = (
    "jobs",
    "attempts",
    *COMPONENT_COLUMNS,
    "estimate_usd",
    "reclaimed_usd",
    "reclaimed_share",
    *RECLAIMED_COMPONENT_COLUMNS,
    "billed_usd",
)


def month_argument(value: str) -> str:
    if not _MONTH.match(value):
        raise argparse.ArgumentTypeError(f"month {value!r}: expected YYYY-MM, e.g. 2026-11")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cost`` subcommand; it sets ``func`` to the function that runs it."""
    parser = subparsers.add_parser(
        "cost",
        help="what each job cost (estimate, reclaimed share, billed)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--by", choices=GROUPINGS, default="job", help="one row per ...")
    parser.add_argument("--format", choices=FORMATS, default="table", dest="output_format")
    parser.add_argument("--month", type=month_argument, help="only jobs started in YYYY-MM (UTC)")
    parser.add_argument("--user", help="only this user's jobs")
    parser.add_argument(
        "--cluster",
        default=os.environ.get(config.CLUSTER),
        help=f"cluster name (default ${config.CLUSTER})",
    )
    parser.add_argument(
        "--table",
        default=os.environ.get(config.COSTS_TABLE),
        help=f"job cost table (default ${config.COSTS_TABLE}; the cluster stack outputs it)",
    )
    parser.add_argument("--region", help="AWS region of the table (default: boto3's)")
    parser.set_defaults(func=run)
    return parser


def _gib(attempts: list[dict[str, Any]], field: str) -> float | None:
    metered = [a[field] for a in attempts if a.get(field) is not None]
    return round(sum(metered) / GIB, 3) if metered else None


def _components(item: dict[str, Any]) -> dict[str, Any]:
    """Per-component dollars and their reclaimed parts; None for a job priced before the
    breakdown existed."""
    breakdown = item.get("cost_breakdown") or {}
    values: dict[str, Any] = {}
    for component in COMPONENTS:
        part = breakdown.get(component) or {}
        values[f"{component}_usd"] = part.get("usd")
        values[f"reclaimed_{component}_usd"] = part.get("reclaimed_usd")
    return values


def _job_row(item: dict[str, Any]) -> dict[str, Any]:
    attempts = item.get("attempts") or []
    types = sorted(
        {n.get("instance_type") for a in attempts for n in a.get("nodes", [])} - {None, ""}
    )
    return {
        **_components(item),
        "storage_read_gib": _gib(attempts, "storage_read_bytes"),
        "storage_write_gib": _gib(attempts, "storage_write_bytes"),
        "cost_breakdown": item.get("cost_breakdown"),
        "job_id": str(item.get("job_id", "")),
        "user": item.get("user", ""),
        "job_name": item.get("job_name", ""),
        "month": item.get("month", ""),
        "attempts": len(attempts),
        "instance_types": " ".join(types),
        "estimate_usd": item.get("estimate_usd"),
        "reclaimed_usd": item.get("reclaimed_usd"),
        "reclaimed_share": item.get("reclaimed_share"),
        "billed_usd": item.get("billed_usd"),
        "flags": " ".join(item.get("flags") or []),
    }


def rows(items: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    jobs = sorted(
        (_job_row(i) for i in items),
        key=lambda r: (r["month"], int(r["job_id"]) if r["job_id"].isdigit() else r["job_id"]),
    )
    if by == "job":
        return jobs
    groups: dict[str, dict[str, Any]] = {}
    for job in jobs:
        key = job[by]
        group = groups.setdefault(
            key,
            {
                by: key,
                "jobs": 0,
                "attempts": 0,
                "estimate_usd": 0.0,
                "reclaimed_usd": 0.0,
                "billed_usd": None,
                **dict.fromkeys(COMPONENT_COLUMNS + RECLAIMED_COMPONENT_COLUMNS, 0.0),
            },
        )
        for column in COMPONENT_COLUMNS + RECLAIMED_COMPONENT_COLUMNS:
            group[column] += job[column] or 0.0
        group["jobs"] += 1
        group["attempts"] += job["attempts"]
        group["estimate_usd"] += job["estimate_usd"] or 0.0
        group["reclaimed_usd"] += job["reclaimed_usd"] or 0.0
        if job["billed_usd"] is not None:
            group["billed_usd"] = (group["billed_usd"] or 0.0) + job["billed_usd"]
    result = []
    for key in sorted(groups):
        group = groups[key]
        estimate = group["estimate_usd"]
        group["estimate_usd"] = round(estimate, 10)
        for column in ("reclaimed_usd", *COMPONENT_COLUMNS, *RECLAIMED_COMPONENT_COLUMNS):
            group[column] = round(group[column], 10)
        group["reclaimed_share"] = round(group["reclaimed_usd"] / estimate, 10) if estimate else 0.0
        if group["billed_usd"] is not None:
            group["billed_usd"] = round(group["billed_usd"], 10)
        result.append({c: group[c] for c in (by, *GROUP_COLUMNS)})
    return result


def _money(value: Any) -> str:
    return "" if value is None else f"${value:,.4f}"


def write(report: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(
            [{c: r.get(c) for c in (*columns, "cost_breakdown") if c in r} for r in report],
            out,
            indent=2,
        )
        out.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {c: ("" if r.get(c) is None else printable(r.get(c))) for c in columns} for r in report
        )
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="relion-spot job cost")
        for column in columns:
            numeric = column.endswith(("_usd", "_share", "_gib")) or column in ("jobs", "attempts")
            table.add_column(column.replace("_", " "), justify="right" if numeric else "left")
        for row in report:
            cells = []
            for column in columns:
                value = row.get(column)
                if column.endswith("_usd"):
                    cells.append(_money(value))
                elif column.endswith("_gib"):
                    cells.append("" if value is None else f"{value:,.2f}")
                elif column.endswith("_share"):
                    cells.append("" if value is None else f"{value:.1%}")
                else:
                    cells.append("" if value is None else value)
            table.add_row(*(cell(c) for c in cells))
        Console(file=out, width=200).print(table)


def fetch(store: CostStore, cluster: str, month: str | None) -> Iterable[dict[str, Any]]:
    lower, upper = month_bounds(month) if month else (0, 2**40)
    return store.items_starting_between(cluster, lower, upper)


def run(args: argparse.Namespace, *, client: Any = None, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    for name, value, variable in (
        ("--cluster", args.cluster, config.CLUSTER),
        ("--table", args.table, config.COSTS_TABLE),
    ):
        if not value:
            print(f"relion-spot cost: {name} is required (or set {variable})", file=sys.stderr)
            return 2
    if client is None:
        import boto3

        client = boto3.session.Session(region_name=args.region).client("dynamodb")
    try:
        items = [
            i
            for i in fetch(CostStore(client, args.table), args.cluster, args.month)
            if not args.user or i.get("user") == args.user
        ]
    except client.exceptions.ResourceNotFoundException:
        print(
            f"relion-spot cost: table {args.table!r} not found in this account/region",
            file=sys.stderr,
        )
        return 1
    except (BotoCoreError, ClientError) as err:
        print(f"relion-spot cost: cannot read {args.table!r}: {err}", file=sys.stderr)
        return 1
    report = rows(items, args.by)
    columns = JOB_COLUMNS if args.by == "job" else (args.by, *GROUP_COLUMNS)
    write(report, columns, args.output_format, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relion-spot")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(["cost", *sys.argv[1:]]))
