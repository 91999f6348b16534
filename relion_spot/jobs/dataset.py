"""``python -I -m relion_spot.jobs.dataset``: a Class3D job's data set, from S3 straight to the
node's NVMe, and the directory RELION runs in printed on stdout.

    python -I -m relion_spot.jobs.dataset --source s3://bucket/sets/bench/ --particles P.star \\
        --reference ref.mrc --scratch /scratch \\
        --s3-credentials /run/relion-spot/stage-credentials.sock

What a Class3D job with a ``dataset`` runs before RELION (relion_spot.jobs.class3d), as the job
user, with the session the node's broker hands this job for that prefix or object alone
(relion_spot.node.stage_credentials), into a directory of scratch of this job's own, made afresh
on every attempt (``fresh_dir``). A prefix (``s3://bucket/prefix/``, the set's files as they
are) is copied in parallel (relion_spot.staging.prefix); a tarball is downloaded in one stream
and unpacked by the staging fetch (relion_spot.staging: traversal-safe). Either way the
particles STAR, its image stacks and the reference map are read before RELION starts. The
particles never pass through, or stay on, the shared file system: with EFS in Elastic
throughput that copy is what a refinement's reads bill (``relion-spot estimate --only
storage``).

Exit status: 0 staged, 1 the transfer or the data failed a check, 2 a bad value.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from relion_spot.staging import cli as staging
from relion_spot.staging.credentials import s3_client_from_broker
from relion_spot.staging.errors import StagingError
from relion_spot.staging.prefix import CONNECTIONS, copy_prefix
from relion_spot.staging.report import make_reporter
from relion_spot.staging.unpack import verify

DATASETS_DIR = "relion-spot-datasets"
"""Under the node's scratch: this attempt's data set, in ``job-<Slurm job id>``."""
BIND_SAFE = re.compile(r"^[\w./+@=-]+$", re.ASCII)
"""What the directory RELION runs in may hold: Apptainer's --bind splits on , and :."""


def fresh_dir(scratch: Path, job_id: str) -> Path:
    """This attempt's directory, not yet made, with every earlier job's data set on the node
    removed first: a GPU node runs one job at a time (--exclusive), every job runs as the same
    user, so a set another job left (or planted, with a marker saying verified) is never read,
    and the NVMe holds one set at a time. Links are removed, never followed."""
    base = scratch / DATASETS_DIR
    if base.is_symlink() or (base.exists() and not base.is_dir()):
        base.unlink()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in base.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return base / f"job-{job_id}"


def reference_file(reference: str) -> str:
    """RELION's --ref without its ``:mrc`` type suffix: the file the fetch checks."""
    return reference.split(":", 1)[0]


def main(argv: list[str] | None = None, *, s3_client: Any = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.jobs.dataset",
        description="Stage a Class3D job's data set from S3 to the node's scratch; print where.",
    )
    parser.add_argument(
        "--source", required=True, help="s3://bucket/prefix/ of the set, or s3://bucket/key.tar"
    )
    parser.add_argument("--sha256", help="a tarball's sha256")
    parser.add_argument("--particles", required=True, help="particles STAR inside the data set")
    parser.add_argument("--reference", required=True, help="reference map inside the data set")
    parser.add_argument("--scratch", type=Path, required=True, help="the node's NVMe scratch")
    parser.add_argument("--s3-credentials", metavar="SOCKET", help="the node's credential broker")
    args = parser.parse_args(argv)
    try:
        dest = fresh_dir(args.scratch, os.environ.get("SLURM_JOB_ID", "0"))
    except OSError as error:
        print(f"dataset: cannot prepare {args.scratch / DATASETS_DIR}: {error}", file=sys.stderr)
        return 1
    if args.source.endswith("/"):
        return _copy_prefix(args, dest, s3_client)
    words = ["fetch", "--source", args.source, "--dest", str(dest)]
    words += ["--particles-star", args.particles]
    words += ["--reference-map", reference_file(args.reference)]
    if args.sha256:
        words += ["--sha256", args.sha256]
    if args.s3_credentials:
        words += ["--s3-credentials", args.s3_credentials]
    status = staging.main(words, s3_client=s3_client)
    if status != 0:
        return status
    root = staging.staged_root(dest, args.particles)
    if root is None:
        print(f"dataset: {dest} holds no verified staging of {args.particles}", file=sys.stderr)
        return 1
    return _answer(root)


def _copy_prefix(args: argparse.Namespace, dest: Path, s3_client: Any) -> int:
    """The set's files from a prefix, in parallel, checked as a staging's are."""
    bucket, _, prefix = args.source.removeprefix("s3://").partition("/")
    try:
        if s3_client is not None:
            client = s3_client
        elif args.s3_credentials:
            client = s3_client_from_broker(Path(args.s3_credentials))
        else:
            client = boto3.client("s3", config=Config(max_pool_connections=CONNECTIONS))
        files = copy_prefix(client, bucket, prefix, dest, make_reporter())
        checked = verify(dest, files, args.particles, reference_file(args.reference), None)
    except StagingError as error:
        print(f"dataset: failed: {error}", file=sys.stderr)
        return 1
    print(
        f"dataset: verified: {checked.files} files, {checked.particles} particles in "
        f"{checked.stacks} stack(s), reference map {'x'.join(map(str, checked.box))}",
        file=sys.stderr,
    )
    return _answer(checked.root)


def _answer(root: Path) -> int:
    """Print the directory RELION runs in, if Apptainer can take it as a bind destination
    (its --bind splits on , and :) and a shell script can carry it."""
    if not BIND_SAFE.fullmatch(str(root)):
        print(
            f"dataset: the set's top directory {str(root)[-80:]!r} is not valid: ASCII letters, "
            "digits and _ . / + @ = - only (the job binds its own directory inside it)",
            file=sys.stderr,
        )
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
