"""``relion-spot pull JOB|CAMPAIGN -o DIR``: a job's results, or a whole campaign's, on the laptop.

It sends an export (relion_spot.jobs.export) through the intake like any submission, waits for
that CPU job to write the results into the cluster's exchange bucket, then downloads what its
manifest lists into DIR, at the paths the project uses (``Class3D/job001/...``), each file
checked against its sha256 (relion_spot.exchange.download). Run again, it sends a new export and
keeps the files already there whole.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from relion_spot.exchange.download import DownloadError, Progress, Pulled, pull
from relion_spot.exchange.manifest import Entry, check_result_path
from relion_spot.intake import client as intake_client
from relion_spot.intake.table import ACCEPTED, Record
from relion_spot.node.stage_credentials import RESULTS_PREFIX
from relion_spot.staging.report import human_bytes

from .cluster import ClusterError, aws_errors
from .commands import (
    CAMPAIGN_TEMPLATE,
    Context,
    UsageError,
    _common,
    _positive,
    _runner,
    display_state,
    find_submission,
)
from .terminal import printable

PULLED_TEMPLATES = ("class3d", "select", "campaign", "refine3d", "postprocess")
ENDED = ("finished", "failed", "cancelled", "stopped", "rejected")
DEFAULT_TIMEOUT_SECONDS = 1800.0
CHIMERAX_MAPS = ("postprocess_masked.mrc", "run_class001.mrc")


class TransferBar(Progress):
    """rich's progress bar on a terminal; a line per file elsewhere."""

    def __init__(self, err: TextIO, what: str) -> None:
        self.err = err
        self.what = what
        self.bar: Any = None
        self.task: Any = None

    def begin(self, total_bytes: int, files: int) -> None:
        print(f"{self.what}: {files} files, {human_bytes(total_bytes)}", file=self.err)
        if self.err.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total_bytes)

    def file(self, entry: Entry) -> None:
        if self.bar is None:
            print(f"  {entry.path} ({human_bytes(entry.bytes)})", file=self.err)
        else:
            self.bar.update(self.task, description=Path(entry.path).name[:40])

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=count)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _project_dir(item: dict[str, Any]) -> str:
    sid = item["submission_id"]
    try:
        project = json.loads(str(item.get("parameters") or "{}"))["project_dir"]
    except (ValueError, KeyError, TypeError):
        raise ClusterError(f"submission {sid}: its record names no project_dir") from None
    return str(project)


def _jobs(context: Context, item: dict[str, Any], err: TextIO) -> tuple[str, list[str]]:
    """The project and the submission ids to export: the job's own; for a campaign, its Class3D
    and each later step that has finished (the others are named and left out)."""
    from relion_spot.jobs.campaign import STEPS, step_submission_id

    template = str(item.get("template") or "class3d")
    sid = str(item["submission_id"])
    if template not in PULLED_TEMPLATES:
        raise UsageError(
            f"submission {sid} is a {template} job: pull takes a Class3D, a selection, a "
            "campaign or one of its steps"
        )
    if item.get("state") != ACCEPTED:
        raise UsageError(f"submission {sid} is {display_state(item)}: it has no results")
    if template in STEPS[1:]:  # a campaign's later step: its project is the campaign's
        try:
            campaign = json.loads(str(item.get("parameters") or "{}"))["campaign"]
        except (ValueError, KeyError, TypeError):
            raise ClusterError(f"submission {sid}: its record names no campaign") from None
        return _project_dir(find_submission(context, str(campaign))), [sid]
    project, chosen = _project_dir(item), [sid]
    if template == CAMPAIGN_TEMPLATE:
        for step in STEPS[1:]:
            try:
                later = find_submission(context, step_submission_id(sid, step))
            except UsageError:
                print(f"  {step}: not submitted, left out", file=err)
                continue
            state = display_state(later)
            if state != "finished":
                print(f"  {step}: {state}, left out", file=err)
                continue
            chosen.append(str(later["submission_id"]))
    return project, chosen


def run_to_end(
    context: Context,
    submission_id: str,
    what: str,
    *,
    timeout: float,
    poll: float,
    ours: Callable[[Record], bool] = lambda _: True,
) -> dict[str, Any]:
    """Wait for the drainer's decision on a CPU job the CLI sent (an export, an import, a
    staging), then for the job's end; its record once it finished, or ClusterError saying what
    became of it. ``ours``: the decided record must be the one this CLI sent."""
    with aws_errors("reading the intake table"):
        try:
            decided = intake_client.wait_for_decision(
                context.table, submission_id, timeout, poll_seconds=poll
            )
        except intake_client.SubmissionPending as pending:
            raise ClusterError(str(pending)) from None
        if not ours(decided):
            raise ClusterError(
                f"submission {submission_id} is not this {what} (another submission took its "
                "id): run the command again"
            )
        if decided.state != ACCEPTED:
            raise ClusterError(f"the {what} was rejected: {decided.message or '(no reason)'}")
        print(
            f"{what} job {printable(decided.job_id or '?')} on the CPU partition",
            file=context.err,
        )
        deadline = time.monotonic() + timeout
        while True:
            item = find_submission(context, submission_id)
            state = display_state(item)
            if state in ENDED:
                break
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"submission {submission_id} is still {state} after {timeout:g} s; see "
                    f"relion-spot status --stack {context.handle.stack} {submission_id}"
                )
            time.sleep(poll)
    if state != "finished":
        raise ClusterError(
            f"the {what} job {item.get('job_id')} is {state}: see relion-spot logs --stack "
            f"{context.handle.stack} {item.get('job_id')}"
        )
    return item


def pull_results(
    context: Context, selector: str, folder: Path, *, user: str, timeout: float, poll: float
) -> Pulled:
    """Export the job (or campaign) ``selector`` names and download its results into
    ``folder``; what was pulled."""
    bucket = context.handle.exchange_bucket
    if not bucket:
        raise ClusterError(
            f"stack {context.handle.stack} has no results exchange (deployed by an older "
            "version): deploy this version to pull results"
        )
    item = find_submission(context, selector)
    project, chosen = _jobs(context, item, context.err)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {str(folder)!r} is a file: give a folder")
    with aws_errors(f"sending to the intake queue of {context.handle.stack}"):
        try:
            sent = intake_client.submit(
                context.client("sqs"),
                None,
                context.handle.queue_url,
                parameters={"project_dir": project, "submissions": chosen},
                user=user,
                template="export",
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    print(
        f"exporting {len(chosen)} job(s) of {project} (submission {sent.submission_id})",
        file=context.err,
    )
    run_to_end(context, sent.submission_id, "export", timeout=timeout, poll=poll)
    prefix = f"{RESULTS_PREFIX}{sent.submission_id}/"
    with aws_errors(f"reading s3://{bucket}/{prefix}"):
        try:
            got = pull(
                context.client("s3"), bucket, prefix, folder,
                progress=TransferBar(context.err, "pull"), paths=check_result_path,
            )  # fmt: skip
        except DownloadError as error:
            raise ClusterError(str(error)) from None
    if got.manifest.submission != sent.submission_id:
        raise ClusterError(
            f"s3://{bucket}/{prefix}: the manifest is for {got.manifest.submission!r}, not this "
            "export"
        )
    return got


def pull_command(args: argparse.Namespace, context: Context) -> int:
    folder = Path(args.output)
    got = pull_results(
        context,
        args.selector,
        folder,
        user=args.user or getpass.getuser(),
        timeout=args.timeout,
        poll=args.poll,
    )
    manifest = got.manifest
    print(
        f"pulled {len(got.downloaded)} files ({len(got.kept)} already here), "
        f"{human_bytes(manifest.total_bytes)} into {folder}",
        file=context.err,
    )
    for _, directory in manifest.jobs:
        print(f"{folder / directory}", file=context.out)
    maps = [e.path for e in manifest.files if Path(e.path).name in CHIMERAX_MAPS]
    if maps:
        print(
            f"open in ChimeraX: chimerax {' '.join(str(folder / m) for m in maps)}",
            file=context.err,
        )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="bring a job's or a campaign's results (maps, half maps, STAR files, FSC plot) "
        "to a folder here",
    )
    _common(parser)
    parser.add_argument("selector", help="a job id, a submission id or a campaign's id")
    parser.add_argument("-o", "--output", required=True, help="the folder to download into")
    parser.add_argument("--user", help="who the export is recorded as (default: you)")
    parser.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait"
    )
    parser.add_argument("--poll", type=_positive, default=2.0, help=argparse.SUPPRESS)
    parser.set_defaults(func=_runner("pull", pull_command))
