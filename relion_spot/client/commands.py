"""``relion-spot submit | status | logs | cancel | plot``: a deployed cluster, from the lab's desk.

    relion-spot submit class3d --stack relion-spot-gpu1 --project-dir /data/p --particles p.star \
        --reference r.mrc --particle-diameter 200 --K 4 --iter 30        prints the job id
    relion-spot submit class3d --stack relion-spot-gpu1 --preset benchmark   EMPIAR-10028
    relion-spot status --stack relion-spot-gpu1 [JOB_ID | SUBMISSION_ID] [--json]
    relion-spot logs   --stack relion-spot-gpu1 JOB_ID
    relion-spot cancel --stack relion-spot-gpu1 JOB_ID
    relion-spot plot   --stack relion-spot-gpu1 JOB_ID -o convergence.png

``--stack`` may come from RELION_SPOT_STACK. Every failure is one line on stderr and a non-zero
exit: 1 for what the cluster or AWS said, 2 for what was typed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from relion_spot.intake import client as intake_client
from relion_spot.intake.message import canonical_id, new_cancel
from relion_spot.intake.table import (
    ACCEPTED,
    CANCEL_FAILED,
    CANCEL_REQUESTED,
    CANCELLED,
    ESTIMATED,
    REJECTED,
    IntakeTable,
    is_submission,
)
from relion_spot.jobs.parameters import (
    PARAMETER_NAMES,
    PRESET,
    PRESETS,
    RANGES,
    REQUIRED,
    SWITCHES,
    Class3dParams,
    JobParameterError,
)

from .cluster import STACK_ENV, ClusterError, ClusterHandle, aws_errors, find_cluster
from .terminal import cell, printable

DEFAULT_TIMEOUT_SECONDS = 600.0
CANCEL_TIMEOUT_SECONDS = 120.0
SCAN_LIMIT = 2000
"""Submissions read at most per status (newest shown): the table keeps every submission."""
SHOWN = 20
DEAD_LETTERS_SHOWN = 3
"""Dead letters listed by ``status`` (the oldest); the count is always the whole queue's."""
_sleep = time.sleep


class UsageError(ClusterError):
    """Something typed that cannot work (exit 2)."""


@dataclass
class Context:
    """What a command runs with: the cluster and its AWS clients (tests build their own)."""

    handle: ClusterHandle
    session: Any
    out: TextIO
    err: TextIO

    def client(self, name: str) -> Any:
        return self.session.client(name)

    @property
    def table(self) -> IntakeTable:
        return IntakeTable(self.client("dynamodb"), self.handle.intake_table)


def _session(stack: str | None, region: str | None) -> Any:
    """The caller's AWS session; for ``--stack local``, one on the standing embedded cloud
    (``relion-spot local up``), whose stack answers as a deployed one does."""
    import boto3

    from relion_spot.local import standing

    if stack == standing.STACK:
        try:
            return standing.session()
        except standing.StandingError as error:
            raise ClusterError(str(error)) from None
    return boto3.session.Session(region_name=region or None)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack",
        default=os.environ.get(STACK_ENV),
        help=f"the cluster's CloudFormation stack, e.g. relion-spot-gpu1 (default ${STACK_ENV})",
    )
    parser.add_argument("--region", help="the stack's AWS region (default: your AWS config)")


def _runner(
    name: str, body: Callable[[argparse.Namespace, Context], int]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out, err = sys.stdout, sys.stderr
        try:
            session = _session(args.stack, args.region)
            handle = find_cluster(args.stack, session=session)
            return body(args, Context(handle, session, out, err))
        except UsageError as error:
            print(f"relion-spot {name}: {printable(error)}", file=err)
            return 2
        except ClusterError as error:  # may quote a reason or an answer the job's side wrote
            print(f"relion-spot {name}: {printable(error)}", file=err)
            return 1

    return run


# --- submit -------------------------------------------------------------------------------


def _option(name: str) -> str:
    return "--" + (name if name == "K" else name.replace("_", "-"))


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "job parameters (the data's four are required unless --preset benchmark; see "
        "relion_spot.jobs.parameters)"
    )
    group.add_argument(
        "--preset",
        choices=PRESETS,
        help="start from the EMPIAR-10028 benchmark's parameters and data (relion_benchmark)",
    )
    defaults = Class3dParams()
    for name in PARAMETER_NAMES:
        default = getattr(defaults, name)
        if name in SWITCHES:
            group.add_argument(
                _option(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"relion_refine --{name} (default {'on' if default else 'off'})",
            )
            continue
        if name == "extra_flags":
            help_text = "further relion_refine flags, quoted as one word, e.g. '--maxsig 500'"
        elif name == "continue_from":
            help_text = (
                "continue a Class3D job of the project into a new one: Class3D/job005[:N] "
                "(default its newest complete iteration); with --iter, and only the options "
                "RELION reads again on --continue"
            )
        elif name in RANGES:
            shown = "sized to the node" if default is None else default
            help_text = f"{RANGES[name].describe()} (default {shown})"
        else:
            help_text = f"default {default}"
        if name in REQUIRED:
            help_text = f"required (the benchmark preset: {default})"
        group.add_argument(_option(name), dest=name, metavar="VALUE", help=help_text)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given, validated and typed as the job will see them."""
    from relion_spot.jobs.parameters import from_mapping

    if args.template == "stage":
        from relion_spot.jobs.stage import STAGE_FIELDS, stage_from_mapping

        staged = {n: getattr(args, n) for n in STAGE_FIELDS if getattr(args, n) is not None}
        try:
            stage_from_mapping(staged)
        except JobParameterError as error:
            raise UsageError(str(error)) from None
        return staged
    if args.template == "select":
        from relion_spot.jobs.select import SELECT_FIELDS, select_from_mapping

        chosen = {n: getattr(args, n) for n in SELECT_FIELDS if getattr(args, n) is not None}
        try:
            selection = select_from_mapping(chosen)
        except JobParameterError as error:
            raise UsageError(str(error)) from None
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in SELECT_FIELDS
            if (value := getattr(selection, name)) is not None
        }
    if args.template == "synthetic":
        from relion_spot.jobs.synthetic import SYNTHETIC_FIELDS, synthetic_from_mapping

        asked = {n: getattr(args, n) for n in SYNTHETIC_FIELDS if getattr(args, n) is not None}
        try:
            made = synthetic_from_mapping(asked)
        except JobParameterError as error:
            raise UsageError(str(error)) from None
        return {name: getattr(made, name) for name in SYNTHETIC_FIELDS}

    own: dict[str, Any] = {}
    if args.template == "campaign":
        own = _campaign_options(args)
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in PARAMETER_NAMES
        if getattr(args, name, None) is not None
    }
    if args.preset is not None:
        given[PRESET] = args.preset
    try:
        params = from_mapping(given)
    except JobParameterError as error:
        raise UsageError(str(error)) from None
    typed: dict[str, Any] = {name: getattr(params, name) for name in given if name != PRESET}
    if args.preset is not None:
        typed[PRESET] = args.preset
    if "extra_flags" in typed:
        typed["extra_flags"] = list(typed["extra_flags"])
    return {**typed, **own}


def _campaign_options(args: argparse.Namespace) -> dict[str, Any]:
    """A campaign's own two options, checked as the drainer checks them."""
    from relion_spot.jobs.campaign import (
        MAX_LOCAL_HEALPIX_ORDER,
        check_refine_class,
        refuse_continuation,
    )

    own: dict[str, Any] = {}
    try:
        refuse_continuation(args.continue_from)
        own["refine_class"] = check_refine_class(args.refine_class)
    except JobParameterError as error:
        raise UsageError(str(error)) from None
    order = args.local_healpix_order
    if order is not None:
        if not (order.isascii() and order.isdigit() and len(order) <= 2) or not (
            1 <= int(order) <= MAX_LOCAL_HEALPIX_ORDER
        ):
            raise UsageError(
                f"parameter local_healpix_order = {order[:20]!r} is not valid: a whole number "
                f"from the Class3D's healpix_order to {MAX_LOCAL_HEALPIX_ORDER}"
            )
        own["local_healpix_order"] = int(order)
    return own


def _wake(context: Context) -> None:
    handle = context.handle
    if not handle.ecs_cluster or not handle.controller_service:
        return
    from relion_spot.controller_wake.wake import wake_controller

    try:
        if wake_controller(context.client("ecs"), handle.ecs_cluster, handle.controller_service):
            print("the controller was asleep: waking it (about a minute)", file=context.err)
    except Exception as error:  # the submission is queued; the wake check finds it
        print(
            f"could not wake the controller ({error}); the cluster's wake check tries every "
            "five minutes",
            file=context.err,
        )


def submit_command(args: argparse.Namespace, context: Context) -> int:
    parameters = _parameters(args)
    user = args.user or getpass.getuser()
    table = context.table
    with aws_errors(f"sending to the intake queue of {context.handle.stack}"):
        try:
            sent = intake_client.submit(
                context.client("sqs"),
                None,
                context.handle.queue_url,
                parameters=parameters,
                user=user,
                template=args.template,
                dry_run=getattr(args, "dry_run", False),
            )
        except ValueError as error:  # InvalidSubmission: the same check the drainer makes
            raise UsageError(str(error)) from None
    print(f"submitted {sent.submission_id} to {context.handle.cluster_name}", file=context.err)
    _wake(context)
    if args.no_wait:
        print(sent.submission_id, file=context.out)
        return 0
    print(f"waiting up to {args.timeout:g} s for the controller to decide ...", file=context.err)
    with aws_errors("reading the intake table"):
        try:
            decided = intake_client.wait_for_decision(
                table, sent.submission_id, args.timeout, poll_seconds=args.poll
            )
        except intake_client.SubmissionPending as pending:
            raise ClusterError(
                f"{pending}; the controller may still be waking up; the submission stays "
                f"queued: see relion-spot status --stack {context.handle.stack} "
                f"{sent.submission_id}"
            ) from None
    if decided.state == ESTIMATED:
        print(_dry_run_report(decided.message or ""), file=context.out)
        return 0
    if decided.state != ACCEPTED or not decided.job_id:
        raise ClusterError(f"rejected: {decided.message or '(no reason recorded)'}")
    print(f"accepted: Slurm job {printable(decided.job_id)}", file=context.err)
    if args.template == "campaign" and "; then " in (decided.message or ""):
        steps = (decided.message or "").rsplit("; then ", 1)[1]
        print(f"  then {printable(steps)}", file=context.err)
    print(printable(decided.job_id), file=context.out)
    return 0


def _dry_run_report(note: str) -> str:
    """The controller's dry-run note, one finding per line (the drainer joins them with ';')."""
    lines = []
    for part in printable(note).removeprefix("dry run: ").split("; "):
        if part.startswith("predicted (") and ": " in part:
            head, first = part.split(": ", 1)
            lines += [f"{head}:", f"  {first}"]
        elif " spot to $" in part:  # a further GPU type's prediction
            lines.append(f"  {part}")
        else:
            lines.append(part)
    return "\n".join(["dry run: nothing was submitted", *lines])


# --- reading the table --------------------------------------------------------------------


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    from relion_spot.cost.store import deserialize

    return deserialize(item)


def _scan(context: Context, limit: int, **filters: Any) -> list[dict[str, Any]]:
    """Submissions read by boto3's scan paginator (up to ``limit``), newest first; the table
    also holds the permission checks (selftest.record), which are left out, and may hold items
    a node made of report attributes alone (no state: neither claim nor decision), left out too."""
    pages = (
        context.client("dynamodb")
        .get_paginator("scan")
        .paginate(TableName=context.handle.intake_table, **filters)
    )
    items: list[dict[str, Any]] = []
    with aws_errors(f"reading intake table {context.handle.intake_table}"):
        for page in pages:
            items += [
                _plain(i)
                for i in page.get("Items", [])
                if canonical_id(i.get("submission_id", {}).get("S")) and is_submission(i)
            ]
            if len(items) >= limit:
                break
    items.sort(key=lambda i: (str(i.get("submitted_at", "")), int(i.get("decided_at") or 0)))
    return items[::-1][:limit]


def submissions(context: Context, *, limit: int = SCAN_LIMIT) -> list[dict[str, Any]]:
    """Every submission (up to ``limit`` read), newest first."""
    return _scan(context, limit)


def find_submission(context: Context, selector: str) -> dict[str, Any]:
    """The submission a job id or a submission id names; UsageError when there is none. A
    submission id is the table's key (one GetItem); a job id is matched by the scan's filter,
    the newest submission first (ids restart when a controller's state is reset)."""
    wanted = selector.strip()
    if canonical_id(wanted) is None and not wanted.isdigit():
        raise UsageError(f"{selector!r} is neither a Slurm job id nor a submission id (a UUID)")
    submission_id = canonical_id(wanted)
    if submission_id:
        table = context.handle.intake_table
        with aws_errors(f"reading intake table {table}"):
            found = context.client("dynamodb").get_item(
                TableName=table, Key={"submission_id": {"S": submission_id}}, ConsistentRead=True
            )
        if is_submission(found.get("Item")):
            return _plain(found["Item"])
        what = "submission"
    else:
        matches = _scan(
            context,
            SCAN_LIMIT,
            FilterExpression="job_id = :job",
            ExpressionAttributeValues={":job": {"S": wanted}},
        )
        if matches:
            return matches[0]
        what = "job"
    raise UsageError(
        f"no {what} {wanted} among the submissions of {context.handle.cluster_name} "
        f"(stack {context.handle.stack})"
    )


def display_state(item: dict[str, Any]) -> str:
    state = str(item.get("state", ""))
    cancel = str(item.get("cancel_state", ""))
    progress = item.get("progress") or {}
    if state != ACCEPTED:
        return state or "?"
    if cancel == CANCELLED:
        return "cancelled"
    if progress.get("state"):
        running = str(progress["state"]).lower()
        return f"{running} ({cancel})" if cancel in (CANCEL_REQUESTED, CANCEL_FAILED) else running
    if not cancel and item.get("held_reason"):
        return "held"
    return cancel or "queued"


def costs(context: Context, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Job id -> its priced cost (estimate_usd, billed_usd ...), for the jobs priced so far."""
    from relion_spot.cost.store import CostStore, job_key

    cluster = context.handle.cluster_name
    keys = {job_key(cluster, j): j for j in job_ids if j}
    if not keys:
        return {}
    store = CostStore(context.client("dynamodb"), context.handle.costs_table)
    with aws_errors(f"reading job cost table {context.handle.costs_table}"):
        found = store.previous(list(keys))
    return {keys[k]: v for k, v in found.items() if k in keys}


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def status_row(item: dict[str, Any], cost: dict[str, Any] | None) -> dict[str, Any]:
    progress = item.get("progress") or {}
    usd = None
    if cost:
        billed = cost.get("billed_usd")
        usd = billed if billed is not None else cost.get("estimate_usd")
    return {
        "submission_id": item.get("submission_id"),
        "job_id": item.get("job_id"),
        "template": item.get("template") or "",
        "user": item.get("user"),
        "state": display_state(item),
        "submitted_at": item.get("submitted_at"),
        "current_iteration": progress.get("current_iteration"),
        "requested_iterations": progress.get("requested_iterations"),
        "resolution_angstrom": progress.get("resolution_angstrom"),
        "eta_seconds": progress.get("eta_seconds"),
        "resumes": progress.get("resumes"),
        "truth_accuracy": progress.get("truth_accuracy"),
        "bfactor": progress.get("bfactor"),
        "truth_resolution_angstrom": progress.get("truth_resolution_angstrom"),
        "classes": [
            dict(
                zip(
                    (
                        "share",
                        "resolution_angstrom",
                        "accuracy_rotation_deg",
                        "accuracy_translation_angstrom",
                    ),
                    row,
                    strict=False,
                )
            )
            for row in progress.get("classes") or []
        ],
        "cost_usd": usd,
        "message": item.get("cancel_message") or item.get("message") or "",
        "held_reason": item.get("held_reason") or "",
        "updated": progress.get("updated"),
    }


CAMPAIGN_TEMPLATE = "campaign"


def campaign_summary(context: Context, row: dict[str, Any]) -> dict[str, Any]:
    """A campaign as a whole: each step's job and state, the step it is at, what all its steps
    cost so far, and the PostProcess's resolutions once it has run."""
    from relion_spot.jobs.campaign import STEPS, step_submission_id

    sid = str(row["submission_id"])
    items = [find_submission(context, sid)]
    for step in STEPS[1:]:
        try:
            items.append(find_submission(context, step_submission_id(sid, step)))
        except UsageError:  # not recorded yet (the drain is between two steps) or refused
            items.append({"submission_id": step_submission_id(sid, step), "state": "pending"})
    priced = costs(context, [str(i.get("job_id") or "") for i in items])
    steps = [
        status_row(i, priced.get(str(i.get("job_id") or ""))) | {"step": step}
        for step, i in zip(STEPS, items, strict=True)
    ]
    ended = {"finished", "failed", "cancelled", "rejected", "stopped"}
    current = next((s for s in steps if s["state"] not in ended), None)
    failed = next((s for s in steps if s["state"] in ended - {"finished"}), None)
    if failed is not None:
        state = f"{failed['step']} {failed['state']}"
    elif current is None:
        state = "finished"
    else:
        state = f"{current['step']} {current['state']}"
    spent = [s["cost_usd"] for s in steps if isinstance(s["cost_usd"], int | float)]
    last = steps[-1]
    return {
        "state": state,
        "cost_usd": round(sum(spent), 6) if spent else None,
        "resolution_angstrom": last["resolution_angstrom"] if last["state"] == "finished" else None,
        "truth_resolution_angstrom": last["truth_resolution_angstrom"],
        "bfactor": last["bfactor"],
        "steps": [
            {k: s[k] for k in ("step", "submission_id", "job_id", "state", "cost_usd")}
            for s in steps
        ],
    }


def _table(rows: Sequence[dict[str, Any]], out: TextIO, title: str) -> None:
    from rich.console import Console
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(title=title)
    columns = ("job", "submission", "what", "user", "state", "iteration", "", "resolution", "ETA")
    for column in columns:
        table.add_column(column, justify="right" if column in ("job", "resolution") else "left")
    table.add_column("cost", justify="right")
    for row in rows:
        current, total = row["current_iteration"], row["requested_iterations"]
        bar: Any = ""
        iteration = "-"
        if isinstance(total, int) and total > 0:
            iteration = f"{current or 0}/{total}"
            bar = ProgressBar(total=total, completed=current or 0, width=20)
        resolution = row["resolution_angstrom"]
        state = row["state"]
        cost = row["cost_usd"]
        campaign = row.get("campaign")
        if campaign:
            state, cost = f"campaign: {campaign['state']}", campaign["cost_usd"]
            resolution = campaign["resolution_angstrom"]
        if state == REJECTED and row["message"]:
            state = f"rejected: {row['message'][:60]}"
        elif state == "held":
            state = f"held: {row['held_reason'][:90]}"
        table.add_row(
            cell(row["job_id"] or "-"),
            cell(str(row["submission_id"])[:8]),
            cell(row.get("template") or ""),
            cell(row["user"] or ""),
            cell(state),
            cell(iteration),
            bar,
            f"{resolution:.2f} Å" if isinstance(resolution, int | float) else "-",
            _duration(row["eta_seconds"]) if row["state"] == "running" else "-",
            f"${cost:,.4f}" if isinstance(cost, int | float) else "-",
        )
    Console(file=out, width=160).print(table)


def dead_letters_report(context: Context, *, shown: int) -> list[str]:
    """Lines telling what waits in the dead-letter queue; none while it is empty (or the stack
    predates it). A member without the right to look is told so, and the status still shows."""
    from relion_spot.intake.dead_letters import look

    url = context.handle.dead_letter_queue_url
    if not url:
        return []
    try:
        with aws_errors(f"reading the dead-letter queue of {context.handle.stack}"):
            found = look(context.client("sqs"), url, context.table, shown=shown)
    except ClusterError as error:
        return [f"dead-letter queue not read: {printable(error)}"]
    if found.count == 0:
        return []
    lines = [
        f"dead-letter queue: {found.count} message(s) the intake gave up on"
        + (f"; the oldest {len(found.oldest)}:" if found.oldest else "")
    ]
    for letter in found.oldest:
        sent = letter.sent_at.isoformat(timespec="seconds") if letter.sent_at else "?"
        submission = letter.submission_id or "-"
        lines.append(
            printable(f"  {letter.message_id}  sent {sent}  submission {submission}: ")
            + printable(letter.reason)[:300]
        )
    return lines


def status_command(args: argparse.Namespace, context: Context) -> int:
    if args.selector:
        items = [find_submission(context, args.selector)]
    else:
        items = submissions(context)[: args.limit]
    priced = costs(context, [str(i.get("job_id") or "") for i in items])
    rows = [status_row(i, priced.get(str(i.get("job_id") or ""))) for i in items]
    for row in rows:
        if row["template"] == CAMPAIGN_TEMPLATE and row["state"] not in (REJECTED, ESTIMATED):
            row["campaign"] = campaign_summary(context, row)
    if args.json:
        json.dump(rows, context.out, indent=2, default=str)
        context.out.write("\n")
    elif not rows:
        print(f"no submissions on {context.handle.cluster_name} yet", file=context.out)
    else:
        _table(rows, context.out, f"relion-spot {context.handle.cluster_name}")
    if not args.selector:
        for line in dead_letters_report(context, shown=DEAD_LETTERS_SHOWN):
            print(line, file=context.err if args.json else context.out)
    return 0


def _job(context: Context, job_id: str) -> dict[str, Any]:
    if not job_id.strip().isdigit():
        raise UsageError(f"{job_id!r} is not a Slurm job id (digits)")
    return find_submission(context, job_id)


def logs_command(args: argparse.Namespace, context: Context) -> int:
    item = _job(context, args.job_id)
    tail = str(item.get("log_tail") or "")
    if not tail:
        print(
            f"job {args.job_id} has not reported any output yet ({printable(display_state(item))})",
            file=context.err,
        )
        return 0
    shown = printable(tail, multiline=True)
    context.out.write(shown if shown.endswith("\n") else shown + "\n")
    return 0


def cancel_command(args: argparse.Namespace, context: Context) -> int:
    item = _job(context, args.job_id)
    # Only the controller's own word ends a cancel here. A job's report ("finished") is written
    # through its node, and Slurm answers a cancel of a job that has ended anyway.
    if item.get("cancel_state") == CANCELLED:
        raise ClusterError(f"job {args.job_id} is already cancelled: nothing to cancel")
    request = new_cancel(str(item["submission_id"]), args.job_id, user=getpass.getuser())
    with aws_errors(f"sending to the intake queue of {context.handle.stack}"):
        context.client("sqs").send_message(
            QueueUrl=context.handle.queue_url, MessageBody=request.to_json()
        )
    print(f"cancel of job {args.job_id} requested", file=context.err)
    _wake(context)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    table = context.table
    while True:
        with aws_errors("reading the intake table"):
            record = table.get(request.submission_id)
        if record is not None and record.cancel_state == CANCELLED:
            print(f"job {args.job_id} cancelled", file=context.out)
            return 0
        if record is not None and record.cancel_state == CANCEL_FAILED:
            raise ClusterError(f"Slurm did not cancel job {args.job_id}: {record.cancel_message}")
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"the controller has not acted on the cancel within {args.timeout:g} s; it "
                "stays queued (see relion-spot status)"
            )
        _sleep(args.poll)


def plot_command(args: argparse.Namespace, context: Context) -> int:
    from relion_spot.intake.report import expand
    from relion_spot.relion.progress import plot

    item = _job(context, args.job_id)
    progress = item.get("progress") or {}
    record = expand(progress)
    if not record["iterations"]:
        raise ClusterError(f"job {args.job_id} has no finished iteration yet to plot")
    record["run"] = f"job {args.job_id}"
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"-o {args.output}: directory {output.parent} does not exist")
    if getattr(args, "classes", False):
        _plot_classes(args.job_id, progress, output)
    else:
        plot(output.with_suffix(""), record, path=output)
    print(str(output), file=context.out)
    return 0


def _plot_classes(job_id: str, progress: dict[str, Any], output: Path) -> None:
    """The class picture redrawn from the slices the job reported (relion_spot.relion.progress
    thumbnails), titled with the per-class figures of the same report."""
    from relion_spot.relion.progress import MAX_THUMBNAIL_CLASSES, decode_thumbnails, draw_classes

    reported = progress.get("class_slices")
    if not isinstance(reported, dict):
        raise ClusterError(
            f"job {job_id} has reported no class slices yet (they come with the first drawing, "
            f"and only for runs of at most {MAX_THUMBNAIL_CLASSES} classes)"
        )
    rows = progress.get("classes") or []
    row = {
        "iteration": reported["iteration"],
        "class_distribution": [r[0] or 0.0 for r in rows],
        "class_resolution_angstrom": [r[1] for r in rows],
        "class_accuracy_rotation_deg": [r[2] for r in rows],
        "class_accuracy_translation_angstrom": [r[3] for r in rows],
    }
    slices = decode_thumbnails(reported)
    if len(slices) != len(rows):
        raise ClusterError(f"job {job_id}'s class slices and class figures do not match")
    current = progress.get("current_iteration")
    title = f"job {job_id}: classes at iteration {reported['iteration']}"
    if current and current != reported["iteration"]:
        title += f" (figures of iteration {current})"
    draw_classes(slices, row, title=title, path=output)


COMMANDS: dict[str, Callable[[argparse.Namespace, Context], int]] = {
    "submit": submit_command,
    "status": status_command,
    "logs": logs_command,
    "cancel": cancel_command,
    "plot": plot_command,
}


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than 0")
    return number


def _submission_options(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--user", help="who asks (default: your login name)")
    parser.add_argument("--no-wait", action="store_true", help="print the submission id, go")
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds to wait for acceptance (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument("--poll", type=_positive, default=2.0, help=argparse.SUPPRESS)


def register(subparsers: Any) -> None:
    """Add submit, status, logs, cancel and plot."""
    submit = subparsers.add_parser(
        "submit", help="submit a job to a deployed cluster", description=__doc__.splitlines()[0]
    )
    templates = submit.add_subparsers(dest="template", required=True, metavar="TEMPLATE")
    class3d = templates.add_parser("class3d", help="RELION 3D classification (Class3D)")
    _submission_options(class3d)
    class3d.add_argument(
        "--dry-run",
        action="store_true",
        help="have the controller check the job against the data and print its GPU memory, "
        "predicted hours and dollars per GPU type; submit nothing",
    )
    _add_parameter_options(class3d)
    class3d.set_defaults(func=_runner("submit", submit_command))
    campaign = templates.add_parser(
        "campaign",
        help="Class3D, then a 3D auto-refine of the best (or a chosen) class, then its "
        "PostProcess: one submission, three Slurm jobs each after the one before",
    )
    _submission_options(campaign)
    campaign.add_argument(
        "--dry-run",
        action="store_true",
        help="have the controller check the Class3D against the data and render the later "
        "steps; submit nothing",
    )
    campaign.add_argument(
        "--refine-class",
        dest="refine_class",
        default="best",
        help="the class to refine: a number, or 'best' (default): among classes with at least "
        "1/(2K) of the particles, the finest estimated resolution",
    )
    campaign.add_argument(
        "--local-healpix-order",
        dest="local_healpix_order",
        metavar="N",
        help="the auto-refine's --auto_local_healpix_order (default 4, 3.7 degrees)",
    )
    _add_parameter_options(campaign)
    campaign.set_defaults(func=_runner("submit", submit_command))
    stage = templates.add_parser(
        "stage", help="fetch the benchmark dataset into /data, as a job on the CPU partition"
    )
    _submission_options(stage)
    stage.add_argument("--dest", help="directory under /data (default /data/relion_benchmark)")
    stage.add_argument("--source", help="http(s):// URL or s3://bucket/key of the tarball")
    stage.add_argument("--sha256", help="expected sha256 of the tarball")
    stage.add_argument("--expect-files", type=int, help="files the archive must hold")
    stage.set_defaults(func=_runner("submit", submit_command))
    select = templates.add_parser(
        "select",
        help="keep the particles of chosen classes of a Class3D run (RELION's Select job), "
        "as a job on the CPU partition",
    )
    _submission_options(select)
    select.add_argument("--project-dir", dest="project_dir", required=True, help="/data/<project>")
    select.add_argument("--run", required=True, help="the Class3D job, e.g. Class3D/job005")
    select.add_argument("--classes", required=True, help="class numbers to keep, e.g. 1,3")
    select.add_argument("--iteration", type=int, help="default: the run's newest complete one")
    select.set_defaults(func=_runner("submit", submit_command))
    synthetic = templates.add_parser(
        "synthetic",
        help="make a ground-truthed synthetic particle set in a new project, with the "
        "cluster's RELION image on the CPU partition (try the cluster without data)",
    )
    _submission_options(synthetic)
    synthetic.add_argument(
        "--project-dir", dest="project_dir", required=True, help="a new /data/<project>"
    )
    synthetic.add_argument("--classes", help="K true classes (default 2)")
    synthetic.add_argument("--particles-per-class", dest="particles_per_class", help="default 100")
    synthetic.add_argument("--seed", help="default 0")
    synthetic.set_defaults(func=_runner("submit", submit_command))

    status = subparsers.add_parser("status", help="submissions, progress and cost so far")
    _common(status)
    status.add_argument("selector", nargs="?", help="one job id or submission id")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=SHOWN, help=f"rows (default {SHOWN})")
    status.set_defaults(func=_runner("status", status_command))

    logs = subparsers.add_parser("logs", help="the last lines of a job's output")
    _common(logs)
    logs.add_argument("job_id")
    logs.set_defaults(func=_runner("logs", logs_command))

    cancel = subparsers.add_parser("cancel", help="cancel a job")
    _common(cancel)
    cancel.add_argument("job_id")
    cancel.add_argument("--no-wait", action="store_true", help="do not wait for the outcome")
    cancel.add_argument("--timeout", type=_positive, default=CANCEL_TIMEOUT_SECONDS)
    cancel.add_argument("--poll", type=_positive, default=2.0, help=argparse.SUPPRESS)
    cancel.set_defaults(func=_runner("cancel", cancel_command))

    plot = subparsers.add_parser(
        "plot", help="a job's convergence plot, or with --classes its classes' slices (PNG)"
    )
    _common(plot)
    plot.add_argument("job_id")
    plot.add_argument("-o", "--output", required=True, help="the PNG to write")
    plot.add_argument(
        "--classes",
        action="store_true",
        help="each class's central slices (XY while the run goes, XY/XZ/YZ once it ends), "
        "titled with its share, resolution and accuracy, as the job drew them",
    )
    plot.set_defaults(func=_runner("plot", plot_command))
