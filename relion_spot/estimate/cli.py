"""``relion-spot estimate``: the idle bill of a deployment, per stack and per cluster, and the
storage-design model of the canonical refinement."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from . import storage
from .idle import Estimate, UnpricedResource, estimate_templates, load_prices, read_cloud_assembly

REPO_ROOT = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "estimate",
        help="what the deployment bills per month while no job runs",
        description="Synthesize the app (or read a cdk.out) and price every standing resource "
        "from a dated us-east-1 price table. Data at rest (EFS, tables, logs) is excluded.",
    )
    parser.add_argument(
        "--cdk-out",
        type=Path,
        help="read this synthesized cloud assembly instead of running cdk synth",
    )
    add_context_argument(parser, "CDK context, as for cdk synth (e.g. -c gpus=1,4)")
    parser.add_argument(
        "--only",
        choices=("idle", "storage"),
        help="print only the idle bill (needs a synth) or only the storage-design model",
    )
    parser.set_defaults(func=run)
    return parser


def add_context_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``-c KEY=VALUE`` (repeatable): the settings as ``cdk synth``/``deploy`` take them."""
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def synthesize(context: list[str], outdir: Path) -> None:
    """Run the real CDK CLI, so the estimate prices exactly what `cdk deploy` would deploy."""
    cdk = REPO_ROOT / "node_modules" / ".bin" / "cdk"
    if not cdk.exists():
        raise FileNotFoundError("the CDK CLI is not installed; run scripts/setup.sh first")
    command = [str(cdk), "synth", "--quiet", "-o", str(outdir)]
    for item in context:
        command += ["-c", item]
    env = {
        **os.environ,
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("relion-spot:")]
        raise RuntimeError(lines[0] if lines else result.stderr.strip()[-2000:])


def report(estimate: Estimate, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    prices = estimate.prices
    table = Table(
        title=f"Idle bill, USD/month ({prices['region']} prices of {prices['as_of']}; "
        "data at rest excluded)"
    )
    table.add_column("stack")
    table.add_column("standing resource")
    table.add_column("controller up", justify="right")
    table.add_column("controller asleep", justify="right")
    for item in sorted(estimate.items, key=lambda i: (i.stack, i.what)):
        table.add_row(
            item.stack,
            item.what,
            f"{item.usd_month_controller_up:.2f}",
            f"{item.usd_month_controller_asleep:.2f}",
        )
    console = Console(file=out, width=120)
    console.print(table)
    for line in summary_lines(estimate):
        console.print(line)


def summary_lines(estimate: Estimate) -> list[str]:
    clusters = [s for s in estimate.stacks() if not s.endswith(("-network", "-storage"))]
    shared = [s for s in estimate.stacks() if s not in clusters]
    shared_up = sum(estimate.total(controller_up=True, stack=s) for s in shared)
    shared_asleep = sum(estimate.total(controller_up=False, stack=s) for s in shared)
    lines = [f"shared (network, storage): ${shared_up:.2f}/month"]
    for cluster in clusters:
        up = estimate.total(controller_up=True, stack=cluster)
        asleep = estimate.total(controller_up=False, stack=cluster)
        lines.append(
            f"cluster {cluster}: ${up:.2f}/month with the controller up, "
            f"${asleep:.2f}/month with it scaled to zero"
        )
    lines.append(
        f"whole deployment: ${estimate.total(controller_up=True):.2f}/month controller(s) up, "
        f"${estimate.total(controller_up=False):.2f}/month scaled to zero "
        f"(shared part asleep: ${shared_asleep:.2f})"
    )
    return lines


def report_storage(prices: dict[str, Any], out: TextIO, *, provisioned_mibps: int = 100) -> None:
    """The storage designs for the benchmark on 1 and 4 GPUs, the one chosen, data at rest,
    and what one reclaim at iteration 20 of 25 adds."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=160)
    dated = f"{prices['region']} prices of {prices['as_of']}; modelled, not measured"
    for gpus, job in storage.BENCHMARK.items():
        costs = [storage.price_design(job, d, prices) for d in storage.designs(provisioned_mibps)]
        chosen = storage.choose(costs)
        table = Table(
            title=f"Canonical refinement on {gpus}x A10G ({job.instance_type}, "
            f"{job.gpu_minutes:g} GPU-min, {job.dataset_gib:g} GiB particles, "
            f"{job.output_gib:.1f} GiB output), USD ({dated})"
        )
        for column in (
            "storage design",
            "copy min",
            "write min",
            "wall min",
            "compute",
            "EFS/S3 reads",
            "EFS writes",
            "all-in",
            "standing /month",
            "runs/day on credits",
        ):
            table.add_column(column, justify="left" if column == "storage design" else "right")
        for cost in costs:
            per_day = cost.refinements_per_day_in_credits
            table.add_row(
                cost.design.label + ("  <- chosen" if cost is chosen else ""),
                f"{cost.copy_minutes:.1f}",
                f"{cost.write_minutes:.1f}",
                f"{cost.wall_minutes:.1f}",
                f"{cost.compute_usd:.2f}",
                f"{cost.read_usd:.2f}",
                f"{cost.write_usd:.2f}",
                f"{cost.all_in_usd:.2f}",
                f"{cost.standing_usd_month:.2f}",
                "" if per_day is None else f"{per_day:.1f}",
            )
        console.print(table)
        current = next(
            c for c in costs if (c.design.dataset, c.design.throughput) == storage.CURRENT
        )
        for label, cost in (("chosen", chosen), ("deployed (efs_throughput=elastic)", current)):
            resume = storage.reclaim_premium(job, cost, reclaim_after=20, resumes=True)
            restart = storage.reclaim_premium(job, cost, reclaim_after=20, resumes=False)
            console.print(
                f"{gpus} GPU, {label}: one reclaim at iteration 20 of 25 adds "
                f"${resume:.2f} (resume from iteration 20) vs ${restart:.2f} (restart from zero)"
            )
    rest = Table(
        title=f"The {storage.BENCHMARK[1].dataset_gib:g} GiB particle set at rest ({dated})"
    )
    for column in ("store", "USD/month", "USD per full read"):
        rest.add_column(column, justify="left" if column == "store" else "right")
    for row in storage.at_rest(storage.BENCHMARK[1], prices):
        rest.add_row(row.store, f"{row.usd_month:.2f}", f"{row.usd_per_read:.4f}")
    console.print(rest)
    job = storage.BENCHMARK[1]
    for dataset, throughput in (("efs", "elastic"), ("efs", "bursting"), ("s3", "elastic")):
        console.print(
            f"staging the set once, dataset on {dataset} with EFS {throughput}: "
            f"${storage.staging_usd(job, dataset, throughput, prices):.2f}"
        )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if args.only != "idle":
        report_storage(load_prices(), out)
        if args.only == "storage":
            return 0
    try:
        if args.cdk_out:
            if not (args.cdk_out / "manifest.json").is_file():
                print(
                    f"relion-spot estimate: {args.cdk_out} is not a cdk synth output "
                    "(no manifest.json)",
                    file=sys.stderr,
                )
                return 2
            templates = read_cloud_assembly(args.cdk_out)
        else:
            with tempfile.TemporaryDirectory(prefix="relion-spot-synth-") as tmp:
                synthesize(args.context, Path(tmp))
                templates = read_cloud_assembly(Path(tmp))
        report(estimate_templates(templates), out)
    except (RuntimeError, FileNotFoundError, UnpricedResource) as error:
        print(f"relion-spot estimate: {error}", file=sys.stderr)
        return 2
    return 0
