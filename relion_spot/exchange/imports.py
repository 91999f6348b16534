"""``python -m relion_spot.exchange import``: a folder the lab uploaded, into a project on /data.

    python -I -m relion_spot.exchange import --project-dir /data/p \\
        --s3-credentials /run/relion-spot/stage-credentials.sock

Runs as a batch job on the CPU partition (relion_spot.jobs.imports) after ``relion-spot stage
FOLDER`` uploaded the folder under ``in/<this submission>/`` of the exchange bucket, its
manifest last. The node's broker hands this job a session that may read only there, and names
the place. Every file the manifest lists goes to its path in the project through a temporary
name, checked against its size and sha256 before it is renamed into place; a file already there
with that content is kept (a requeued attempt goes on where the last stopped), one with other
content is never replaced. No path may leave the project or name a hidden file (the cluster's
claims and markers in a project all start with a dot).
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def run(project_dir: Path, credentials: Path) -> int:
    try:
        s3, bucket, prefix = exchange_session(credentials)
        manifest = read_manifest(s3, bucket, prefix)
        for entry in manifest.files:  # refused before the project is made
            check_upload_path(entry.path)
        project_dir.mkdir(parents=True, exist_ok=True)
        got = pull(
            s3, bucket, prefix, project_dir, progress=_Log(), manifest=manifest, replace=False,
            paths=check_upload_path,
        )  # fmt: skip
    except (DownloadError, StagingError, ManifestError, OSError) as err:
        print(f"import: {err}", file=sys.stderr)
        return 1
    print(
        f"import: done: {len(got.downloaded)} files written, {len(got.kept)} already there, "
        f"{human_bytes(manifest.total_bytes)} in {project_dir}",
        flush=True,
    )
    return 0
