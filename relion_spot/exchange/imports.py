"""``python -m relion_spot.exchange import``: a folder the lab uploaded, into a project on /data.

    python -I -m relion_spot.exchange import --project-dir /data/p \\
        --s3-credentials /run/relion-spot/stage-credentials.sock

Runs as a batch job on the CPU partition (relion_spot.jobs.imports) after ``relion-spot stage
FOLDER`` uploaded the folder under ``in/<this submission>/`` of the exchange bucket, its
manifest last. The node's broker hands this job a session that may read only there, and names
the place. Every file the manifest lists goes to its path in the project through a temporary
name, checked against its size and sha256 before it is renamed into place; a file already there
with that content is kept (a requeued attempt goes on where the last stopped), one with other
content is never replaced. No path may leave the project, name a hidden file (the cluster's
claims and markers in a project all start with a dot) or a RELION control file, pass through a
link, or go into a job directory a cluster job has claimed. The manifest must be the one the
lab's CLI uploaded: its sha256 is part of the submission.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path, PurePosixPath

from relion_spot.jobs.job_dir import CLAIM_FILE
from relion_spot.staging.errors import StagingError
from relion_spot.staging.report import human_bytes

from .download import DownloadError, Progress, pull, read_manifest
from .export import exchange_session
from .manifest import Entry, ManifestError, check_upload_path


class _Log(Progress):
    """One line per file in the job's output (``relion-spot logs`` shows the tail)."""

    def begin(self, total_bytes: int, files: int) -> None:
        print(f"import: {files} files, {human_bytes(total_bytes)}", flush=True)

    def file(self, entry: Entry) -> None:
        print(f"import: {entry.path} ({human_bytes(entry.bytes)})", flush=True)


RELION_CONTROL = re.compile(r"^RELION_(JOB|EXIT)_")
"""RELION's pipeline control files (RELION_JOB_ABORT_NOW, RELION_JOB_EXIT_SUCCESS, ...): a job's
own to write, never a staged file."""


def check_destination(project: Path, path: str) -> None:
    """``path`` may be written into ``project``: not a RELION control file, not through a link,
    and not into a job directory a job of the cluster has claimed (its files are that job's)."""
    if RELION_CONTROL.match(PurePosixPath(path).name):
        raise ImportRefused(f"{path}: RELION's control files are a job's own, never staged")
    here = project
    for part in PurePosixPath(path).parts[:-1]:
        here = here / part
        try:
            info = os.lstat(here)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise ImportRefused(f"{path}: {here.relative_to(project)} in the project is a link")
        if os.path.lexists(here / CLAIM_FILE):
            raise ImportRefused(
                f"{path}: {here.relative_to(project)} is a job directory of the cluster's; "
                "staged files never go into one"
            )


class ImportRefused(ValueError):
    """A staged file may not go where its path says; the message names it."""


def run(project_dir: Path, credentials: Path, manifest_sha256: str) -> int:
    try:
        s3, bucket, prefix = exchange_session(credentials)
        manifest = read_manifest(s3, bucket, prefix, sha256=manifest_sha256)
        for entry in manifest.files:  # refused before the project is made
            check_upload_path(entry.path)
            check_destination(project_dir, entry.path)
        project_dir.mkdir(parents=True, exist_ok=True)
        got = pull(
            s3, bucket, prefix, project_dir, progress=_Log(), manifest=manifest, replace=False,
            paths=check_upload_path,
        )  # fmt: skip
    except (DownloadError, StagingError, ManifestError, ImportRefused, OSError) as err:
        print(f"import: {err}", file=sys.stderr)
        return 1
    print(
        f"import: done: {len(got.downloaded)} files written, {len(got.kept)} already there, "
        f"{human_bytes(manifest.total_bytes)} in {project_dir}",
        flush=True,
    )
    return 0
