"""``python -m relion_spot.exchange export``: one or more jobs' results into the exchange bucket.

    python -I -m relion_spot.exchange export --project-dir /data/p --submission ID [...] \\
        --s3-credentials /run/relion-spot/stage-credentials.sock

Runs as a batch job on the CPU partition (relion_spot.jobs.export). The node's broker decides
where it may write (its answer names the bucket and ``out/<this submission>/``); this program
finds each job's directory by its claim, takes its results (relion_spot.relion.results), draws
the FSC pictures, uploads everything and writes the manifest last. A requeued attempt writes
the same keys again.

Exit status: 0 exported, 1 a job has no results yet or S3 failed (the message says which),
2 a value given cannot work.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relion_spot.jobs.job_dir import Owner, find
from relion_spot.relion.results import COMMON, FSC_PICTURE, ResultsError, collect, draw_fsc
from relion_spot.staging.credentials import broker_session
from relion_spot.staging.errors import StagingError
from relion_spot.staging.report import human_bytes

from .manifest import NAME, Entry, Manifest, ManifestError, check_path, sha256_file

MAX_JOBS = 10


class ExportError(RuntimeError):
    """A job has no results to export, or the upload failed; the message is for the user."""


def _log(line: str) -> None:
    print(f"export: {line}", flush=True)


def gather(project: Path, submissions: Sequence[str], scratch: Path) -> list[tuple[str, Path]]:
    """(path in the export, file on disk) for every result of every job, pictures included.
    A file a running job still writes (its log, note, plots) is copied to ``scratch`` first,
    so what is hashed is what is uploaded; a complete iteration's maps and STAR files never
    change once written."""
    chosen: list[tuple[str, Path]] = []
    for submission in submissions:
        claimed = find(project, Owner(cluster="", slurm_job_id="", submission_id=submission))
        if claimed is None:
            raise ExportError(f"no job directory of {project} is claimed by {submission}")
        try:
            results = collect(claimed.directory)
        except ResultsError as err:
            raise ExportError(f"submission {submission}: {err}") from None
        where = claimed.directory.relative_to(project).as_posix()
        (scratch / where).mkdir(parents=True, exist_ok=True)
        for path in results.files:
            try:
                name = check_path(f"{where}/{path.name}")
            except ManifestError as err:
                raise ExportError(f"submission {submission}: {err}") from None
            if path.name in COMMON:
                path = Path(shutil.copyfile(path, scratch / name))
            chosen.append((name, path))
        if results.fsc is not None:
            picture = scratch / where / FSC_PICTURE
            picture.parent.mkdir(parents=True, exist_ok=True)
            chosen.append((f"{where}/{FSC_PICTURE}", draw_fsc(results.fsc, picture)))
    return chosen


def export(
    project: Path,
    submissions: Sequence[str],
    *,
    s3: Any,
    bucket: str,
    prefix: str,
    export_id: str,
    say: Callable[[str], None] = _log,
) -> Manifest:
    """Upload the jobs' results under ``prefix``, the manifest last; the manifest."""
    from botocore.exceptions import BotoCoreError, ClientError

    with tempfile.TemporaryDirectory(prefix="relion-spot-export-") as scratch:
        chosen = gather(project, submissions, Path(scratch))
        entries = []
        total = sum(path.stat().st_size for _, path in chosen)
        say(f"{len(chosen)} files, {human_bytes(total)}, to s3://{bucket}/{prefix}")
        for name, path in chosen:
            entry = Entry(name, path.stat().st_size, sha256_file(path))
            try:
                s3.upload_file(str(path), bucket, prefix + name)
            except (BotoCoreError, ClientError, OSError) as err:
                raise ExportError(f"{name}: the upload failed ({err})") from None
            say(f"{name} ({human_bytes(entry.bytes)})")
            entries.append(entry)
        jobs = []
        for submission in submissions:
            claimed = find(project, Owner(cluster="", slurm_job_id="", submission_id=submission))
            assert claimed is not None  # gather found it
            jobs.append((submission, claimed.directory.relative_to(project).as_posix()))
        manifest = Manifest(
            submission=export_id, project=project.name, jobs=tuple(jobs), files=tuple(entries)
        )
        try:
            s3.put_object(Bucket=bucket, Key=prefix + NAME, Body=manifest.to_json().encode())
        except (BotoCoreError, ClientError) as err:
            raise ExportError(f"the manifest's upload failed ({err})") from None
    say(f"done: {len(entries)} files, {human_bytes(manifest.total_bytes)}")
    return manifest


def run(project_dir: Path, submissions: Sequence[str], credentials: Path) -> int:
    """The export job: the broker's session and place, then ``export``."""
    if len(submissions) > MAX_JOBS:
        print(f"export: at most {MAX_JOBS} --submission", file=sys.stderr)
        return 2
    try:
        s3, bucket, prefix = exchange_session(credentials)
        export(
            project_dir.resolve(),
            submissions,
            s3=s3,
            bucket=bucket,
            prefix=prefix,
            export_id=prefix.rstrip("/").rsplit("/", 1)[-1],
        )
    except (ExportError, StagingError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    return 0


def exchange_session(credentials: Path) -> tuple[Any, str, str]:
    """An S3 client on the broker's session, and the bucket and prefix the broker named."""
    s3, reply = broker_session(credentials)
    bucket, prefix = reply.get("Bucket"), reply.get("Prefix")
    if not isinstance(bucket, str) or not isinstance(prefix, str) or not prefix.endswith("/"):
        raise StagingError("the node's broker named no exchange bucket and prefix")
    return s3, bucket, prefix
