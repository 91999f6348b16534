"""The exchange's manifest: what an export wrote, each file's size and sha256.

Written last by the export job, so its presence means every file it names is in place; read by
the lab's CLI, which trusts nothing in it it has not checked: paths stay inside the folder it
downloads to, sizes and digests have their proper forms, and the list is bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

NAME = ".relion-spot-manifest.json"
"""Hidden: no staged file and no exported result may have a hidden name, so none is it."""
VERSION = 1
MAX_FILES = 100_000
"""A lab's particle set may be one stack per micrograph: tens of thousands of files."""
MAX_PATH_CHARS = 300
MAX_MANIFEST_BYTES = 48 * 1024 * 1024
"""About 300 bytes an entry at the longest paths: MAX_FILES of them fit."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PATH = re.compile(r"^[A-Za-z0-9._/+@:,=-]+$")
_CHUNK = 1 << 20
PARTIAL_SUFFIX = ".part"
"""A download's temporary name beside its place (relion_spot.exchange.download)."""


class ManifestError(ValueError):
    """The manifest is not one an export writes; the message says what is wrong."""


@dataclass(frozen=True)
class Entry:
    path: str
    """Relative to the project: ``<JobType>/jobNNN/<name>``."""
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    submission: str
    """The export's submission id (its prefix in the exchange)."""
    project: str
    jobs: tuple[tuple[str, str], ...]
    """(submission id, job directory) of each job exported."""
    files: tuple[Entry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.files)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "submission": self.submission,
                "project": self.project,
                "jobs": [{"submission": s, "directory": d} for s, d in self.jobs],
                "files": [
                    {"path": e.path, "bytes": e.bytes, "sha256": e.sha256} for e in self.files
                ],
            },
            indent=1,
        )


def sha256_file(path: Path) -> str:
    return sha256_and_size(path)[1]


def sha256_and_size(path: Path) -> tuple[int, str]:
    """The size and sha256 of the bytes read (a file that grows meanwhile is described as read)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def check_path(value: object) -> str:
    """A relative path of plain names, inside whatever folder it is joined to."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_PATH_CHARS
        or not _PATH.fullmatch(value)
        or value.startswith("/")
        or any(part in ("", ".", "..") for part in value.split("/"))
    ):
        raise ManifestError(
            f"path {str(value)[:80]!r} is not accepted: a relative path of ASCII letters, "
            "digits and . _ - + @ : , = /, without . or .. parts, at most "
            f"{MAX_PATH_CHARS} characters"
        )
    return str(PurePosixPath(value))


_RESULT_PATH = re.compile(
    r"^[A-Z][A-Za-z0-9_]{0,39}/job[0-9]{3,6}/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"
)


def check_result_path(value: object) -> str:
    """A path an export writes: ``<JobType>/jobNNN/<name>``, the name not hidden and not a
    download's temporary name. Anything else in a manifest the lab downloads was not written
    by an export (a dotfile or a deeper path must never land in the lab's folder)."""
    path = check_path(value)
    if not _RESULT_PATH.fullmatch(path) or path.endswith(PARTIAL_SUFFIX):
        raise ManifestError(
            f"path {path!r} is not one an export writes: <JobType>/jobNNN/<name>, the name "
            f"starting with a letter, digit or _ and not ending in {PARTIAL_SUFFIX}"
        )
    return path


def check_upload_path(value: object) -> str:
    """A path a lab may stage into a project: ``check_path``'s, and no part hidden (names the
    cluster keeps in a project, such as a job directory's claim, all start with a dot)."""
    path = check_path(value)
    if path.endswith(PARTIAL_SUFFIX):
        raise ManifestError(
            f"path {path!r} is not accepted: {PARTIAL_SUFFIX} names are the import's own"
        )
    if any(part.startswith(".") for part in path.split("/")):
        raise ManifestError(
            f"path {path!r} is not accepted: no part of a staged path may start with '.' (the "
            "cluster's own files in a project do)"
        )
    return path


def parse(data: bytes) -> Manifest:
    """The manifest in ``data``, or ManifestError naming the first thing wrong."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        raw = json.loads(data)
    except ValueError as err:
        raise ManifestError(f"the manifest is not JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ManifestError(f"the manifest is not a version {VERSION} manifest")
    files, jobs = raw.get("files"), raw.get("jobs")
    if not isinstance(files, list) or not isinstance(jobs, list) or len(files) > MAX_FILES:
        raise ManifestError(f"the manifest needs a list of at most {MAX_FILES} files and of jobs")
    entries, seen = [], set()
    for item in files:
        if not isinstance(item, dict):
            raise ManifestError("a file of the manifest is not an object")
        path, size, digest = check_path(item.get("path")), item.get("bytes"), item.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{path}: bytes {str(size)[:40]!r} is not a whole number >= 0")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ManifestError(f"{path}: sha256 {str(digest)[:80]!r} is not 64 hex digits")
        if path in seen:
            raise ManifestError(f"{path} is listed twice")
        seen.add(path)
        entries.append(Entry(path, size, digest))
    pairs = []
    for job in jobs:
        if not isinstance(job, dict):
            raise ManifestError("a job of the manifest is not an object")
        pairs.append((str(job.get("submission", ""))[:80], check_path(job.get("directory"))))
    return Manifest(
        submission=str(raw.get("submission", ""))[:80],
        project=str(raw.get("project", ""))[:MAX_PATH_CHARS],
        jobs=tuple(pairs),
        files=tuple(entries),
    )
