"""``relion-spot stage FOLDER|s3://bucket/key --project-dir /data/p``: a lab's own data into a
project.

An ``s3://`` source (a tarball in one of the cluster's ``stage_buckets``) is fetched, unpacked and
verified by the staging job (relion_spot.jobs.stage) straight from S3. A local folder goes
through the exchange:

The folder's files are hashed (sha256) into a manifest here, uploaded to the cluster's exchange
bucket under ``in/<submission id>/`` with the lab member's own credentials (the manifest last),
and an import job (relion_spot.jobs.imports) on the CPU partition copies them into the project,
checking each against the manifest and never replacing a file that differs. The submission id
follows from the project and the folder's content, so a stage interrupted and run again sends
only what is missing and does not import twice; once that import has failed, a new one starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from relion_spot.exchange.upload import UploadError, folder_files, folder_manifest, upload
from relion_spot.intake import client as intake_client
from relion_spot.jobs.imports import ImportParams
from relion_spot.jobs.parameters import JobParameterError
from relion_spot.node.stage_credentials import UPLOADS_PREFIX
from relion_spot.staging.report import human_bytes

from .cluster import ClusterError, aws_errors
from .commands import (
    Context,
    UsageError,
    _common,
    _positive,
    _runner,
    display_state,
    find_submission,
)
from .pull import DEFAULT_TIMEOUT_SECONDS, TransferBar, run_to_end
from .terminal import printable

STAGE_NAMESPACE = uuid.UUID("0f6d1c2e-7a43-5b8e-9c61-3d2a4b5c6e7f")
"""Names a stage's submission from its project and content (uuid5)."""


def stage_submission_id(project_dir: str, manifest_json: str) -> str:
    digest = hashlib.sha256(manifest_json.encode()).hexdigest()
    return str(uuid.uuid5(STAGE_NAMESPACE, f"{project_dir}\n{digest}"))


def _ours(template: Any, stored: Any, parameters: dict[str, str]) -> bool:
    """The record is this import's: an import of the same project and manifest."""
    try:
        return template == "import" and json.loads(str(stored or "")) == parameters
    except ValueError:
        return False


def _earlier(context: Context, sid: str, parameters: dict[str, str]) -> str:
    """What became of a submission under ``sid`` before: "" (none), its state, or "not ours"
    when the id holds another submission (a lab member may send any id)."""
    try:
        item = find_submission(context, sid)
    except UsageError:
        return ""
    if not _ours(item.get("template"), item.get("parameters"), parameters):
        return "not ours"
    return display_state(item)


def stage_folder(
    context: Context,
    folder: Path,
    project_dir: str,
    *,
    user: str,
    timeout: float,
    poll: float,
) -> dict[str, Any]:
    """Upload ``folder`` and import it into ``project_dir``; the import's record."""
    bucket = context.handle.exchange_bucket
    if not bucket:
        raise ClusterError(
            f"stack {context.handle.stack} has no exchange bucket (deployed by an older "
            "version): deploy this version to stage a folder"
        )
    try:
        ImportParams(project_dir, "0" * 64)
    except JobParameterError as err:
        raise UsageError(str(err)) from None
    try:
        hidden = folder_files(folder).hidden
        if hidden:
            shown = ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else "")
            print(f"left out {len(hidden)} hidden names: {printable(shown)}", file=context.err)
        manifest, pairs = folder_manifest(
            folder,
            submission="",
            project=project_dir,
            progress=TransferBar(context.err, "hashing"),
        )
    except UploadError as err:
        raise UsageError(str(err)) from None
    sid = stage_submission_id(project_dir, manifest.to_json())
    manifest = dataclasses.replace(manifest, submission=sid)
    digest = hashlib.sha256(manifest.to_json().encode()).hexdigest()
    parameters = {"project_dir": project_dir, "manifest_sha256": digest}
    table = context.table
    earlier = _earlier(context, sid, parameters)
    send = True
    if earlier in ("rejected", "estimated", "failed", "cancelled", "stopped", "not ours"):
        # That import did not happen, or the id is taken by a submission that is not this one.
        sid = str(uuid.uuid4())
        manifest = dataclasses.replace(manifest, submission=sid)
        digest = hashlib.sha256(manifest.to_json().encode()).hexdigest()
        parameters["manifest_sha256"] = digest
    elif earlier:
        print(
            f"this folder's import into {project_dir} was sent before ({sid}, {earlier}): "
            "waiting for it, nothing uploaded again",
            file=context.err,
        )
        send = False
    if send:
        prefix = f"{UPLOADS_PREFIX}{sid}/"
        with aws_errors(f"uploading to s3://{bucket}/{prefix}"):
            try:
                sent = upload(
                    context.client("s3"), bucket, prefix, manifest, pairs,
                    progress=TransferBar(context.err, "uploading"),
                )  # fmt: skip
            except UploadError as err:
                raise ClusterError(str(err)) from None
        print(
            f"uploaded {len(sent.sent)} files ({len(sent.kept)} already there), "
            f"{human_bytes(manifest.total_bytes)}",
            file=context.err,
        )
        with aws_errors(f"sending to the intake queue of {context.handle.stack}"):
            intake_client.submit(
                context.client("sqs"), table, context.handle.queue_url,
                parameters=parameters, user=user, template="import", submission_id=sid,
            )  # fmt: skip
    return run_to_end(
        context, sid, "import", timeout=timeout, poll=poll,
        ours=lambda record: _ours(record.template, record.parameters, parameters),
    )  # fmt: skip


def stage_from_s3(
    context: Context, source: str, project_dir: str, *, user: str, timeout: float, poll: float
) -> dict[str, Any]:
    """The staging job for an ``s3://`` tarball into ``project_dir``; its record once it ended."""
    from relion_spot.jobs.stage import StageParams

    try:
        StageParams(dest=project_dir, source=source)
    except JobParameterError as err:
        raise UsageError(str(err)) from None
    with aws_errors(f"sending to the intake queue of {context.handle.stack}"):
        sent = intake_client.submit(
            context.client("sqs"), None, context.handle.queue_url,
            parameters={"dest": project_dir, "source": source}, user=user, template="stage",
        )  # fmt: skip
    return run_to_end(context, sent.submission_id, "staging", timeout=timeout, poll=poll)


def stage_command(args: argparse.Namespace, context: Context) -> int:
    user, timeout, poll = args.user or getpass.getuser(), args.timeout, args.poll
    if args.folder.startswith("s3://"):
        ended = stage_from_s3(
            context, args.folder, args.project_dir, user=user, timeout=timeout, poll=poll
        )
    else:
        ended = stage_folder(
            context, Path(args.folder), args.project_dir, user=user, timeout=timeout, poll=poll
        )
    print(f"staged into {args.project_dir} (job {ended.get('job_id')})", file=context.err)
    print(args.project_dir, file=context.out)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stage",
        help="copy a folder of your own (particles, reference), or a tarball in S3, into a "
        "project on the cluster",
    )
    _common(parser)
    parser.add_argument(
        "folder",
        metavar="FOLDER|s3://bucket/key",
        help="a local folder (its layout becomes the project's), or an s3:// tarball in one of "
        "the cluster's stage_buckets",
    )
    parser.add_argument(
        "--project-dir", dest="project_dir", required=True, help="/data/<project> (made if new)"
    )
    parser.add_argument("--user", help="who the import is recorded as (default: you)")
    parser.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait"
    )
    parser.add_argument("--poll", type=_positive, default=2.0, help=argparse.SUPPRESS)
    parser.set_defaults(func=_runner("stage", stage_command))
