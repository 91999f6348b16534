"""``python -m relion_spot.staging fetch``: download, unpack, verify, mark — as a batch job.

Exit status: 0 staged (or already staged), 1 the transfer or the data failed a check (what arrived
is kept for the next run), 2 a value given cannot work (one line names it and what is accepted).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from . import BENCHMARK_PARTICLES_STAR, BENCHMARK_REFERENCE_MAP, BENCHMARK_URL
from .credentials import s3_client_from_broker
from .errors import BadInput, StagingError
from .report import Reporter, human_bytes, log, make_reporter
from .transfer import Source, download, parse_source, sha256_of
from .unpack import extract, verify

MARKER = ".relion-spot-staged.json"
"""Written last, only after every check passed: its presence means the directory is complete."""
DOWNLOADS = ".download"
LOCK = ".relion-spot-staging.lock"
"""Held (flock, which EFS honours) by the run staging the directory: two jobs never interleave."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _relative(option: str, value: str) -> str:
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts:
        raise BadInput(option, value, "give a path relative to the top of the archive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m relion_spot.staging", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download, unpack and verify a dataset tarball")
    fetch.add_argument("--source", default=BENCHMARK_URL, help="http(s) URL or s3://bucket/key")
    fetch.add_argument("--dest", required=True, help="directory to stage into (on EFS)")
    fetch.add_argument("--sha256", help="expected sha256 of the tarball (64 hex digits)")
    fetch.add_argument("--expect-files", type=int, help="number of files the archive must hold")
    fetch.add_argument("--particles-star", default=BENCHMARK_PARTICLES_STAR)
    fetch.add_argument("--reference-map", default=BENCHMARK_REFERENCE_MAP)
    fetch.add_argument("--retries", type=int, default=5, help="retries of a broken transfer")
    fetch.add_argument("--retry-wait", type=float, default=2.0, help="first retry wait (s)")
    fetch.add_argument(
        "--s3-credentials",
        metavar="SOCKET",
        help="read s3:// with credentials from the node's broker at this Unix socket "
        "(relion_spot.node.stage_credentials; a job holds no instance credentials)",
    )
    fetch.add_argument(
        "--keep-archive", action="store_true", help="keep the tarball after a verified unpack"
    )
    return parser


def _read_marker(dest: Path, *, say: bool = True) -> dict[str, Any] | None:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("verified") is not True:
        return None
    star = marker.get("particles_star")
    if not isinstance(star, str) or not (dest / star).is_file():
        if say:
            log(f"{MARKER} names {star!r}, which is gone: staging again")
        return None
    return marker


def staged_root(dest: Path, particles_star: str) -> Path | None:
    """The directory of a verified staging in ``dest`` that the particles STAR's path is relative
    to (the archive's top directory, when it has one), or None when ``dest`` is not staged."""
    marker = _read_marker(dest, say=False)
    if marker is None:
        return None
    star = PurePosixPath(marker["particles_star"])
    wanted = PurePosixPath(particles_star)
    if star.parts[len(star.parts) - len(wanted.parts) :] != wanted.parts:
        return None
    return dest.joinpath(*star.parts[: len(star.parts) - len(wanted.parts)])


def fetch(args: argparse.Namespace, reporter: Reporter, s3_client: Any = None) -> int:
    source = parse_source(args.source)
    sha = args.sha256.lower() if args.sha256 else None
    if sha is not None and not _SHA256.match(sha):
        raise BadInput("--sha256", args.sha256, "give 64 hexadecimal digits")
    if args.expect_files is not None and args.expect_files < 1:
        raise BadInput("--expect-files", args.expect_files, "give a whole number of at least 1")
    if args.retries < 0:
        raise BadInput("--retries", args.retries, "give a whole number of at least 0")
    particles = _relative("--particles-star", args.particles_star)
    reference = _relative("--reference-map", args.reference_map)
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise BadInput("--dest", args.dest, "give a directory (this is a file)")
    marker = _read_marker(dest)
    if marker is not None:
        log(
            f"already staged, verified: {marker.get('files')} files from {marker.get('source')} "
            f"in {dest}"
        )
        return 0
    if not source.filename:
        raise BadInput("--source", args.source, "the URL must end in the tarball's file name")
    try:
        (dest / DOWNLOADS).mkdir(parents=True, exist_ok=True)
        lock = open(dest / LOCK, "a")  # noqa: SIM115 - held for the whole run, closed by exit
    except OSError as error:
        raise BadInput(
            "--dest", args.dest, f"give a writable directory ({error.strerror})"
        ) from error
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise StagingError(
                f"another staging run is working in {dest}; let it finish (or end it) first"
            ) from error
        marker = _read_marker(dest, say=False)  # it may have finished while this run was starting
        if marker is not None:
            log(f"already staged, verified: {marker.get('files')} files in {dest}")
            return 0
        return _stage(args, source, dest, sha, particles, reference, reporter, s3_client)


def _stage(
    args: argparse.Namespace,
    source: Source,
    dest: Path,
    sha: str | None,
    particles: str,
    reference: str,
    reporter: Reporter,
    s3_client: Any,
) -> int:
    archive = dest / DOWNLOADS / source.filename
    if s3_client is None and source.kind == "s3" and args.s3_credentials:
        s3_client = s3_client_from_broker(Path(args.s3_credentials))
    size = download(
        source,
        archive,
        reporter,
        retries=args.retries,
        backoff_s=args.retry_wait,
        s3_client=s3_client,
    )
    if sha is not None:
        got = sha256_of(archive, reporter)
        if got != sha:
            archive.unlink()
            raise StagingError(
                f"{archive.name}: sha256 {got} does not match the expected {sha}; "
                "the file was removed so the next run downloads it again"
            )
        log(f"{archive.name}: sha256 matches")
    files = extract(archive, dest, reporter)
    checked = verify(dest, files, particles, reference, args.expect_files)
    log(
        f"verified: {checked.files} files, {checked.particles} particles in {checked.stacks} "
        f"stack(s), reference map {'x'.join(map(str, checked.box))}"
    )
    record = {
        "verified": True,
        "source": source.url,
        "bytes": size,
        "sha256": sha,
        "files": checked.files,
        "particles": checked.particles,
        "particles_star": str((checked.root / particles).relative_to(dest)),
        "reference_map": reference,
        "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, dest / MARKER)
    if not args.keep_archive:
        archive.unlink()
        archive.with_name(archive.name + ".part.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            archive.parent.rmdir()
        log(f"removed {archive.name} ({human_bytes(size)}) now that its contents are verified")
    log(f"staged and verified in {dest}")
    return 0


def main(argv: list[str] | None = None, *, s3_client: Any = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return fetch(args, make_reporter(), s3_client=s3_client)
    except BadInput as error:
        print(f"python -m relion_spot.staging: error: {error}", file=sys.stderr)
        return 2
    except StagingError as error:
        print(f"python -m relion_spot.staging: failed: {error}", file=sys.stderr)
        return 1
