"""``python -I -m relion_spot.exchange export|import``: the exchange jobs' programs on a CPU node.

Exit status: 0 done, 1 a job has no results, a file is not what the manifest says or S3 failed
(the message says which), 2 a value given cannot work.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import NoReturn

from . import export, imports

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SUBMISSION = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _submission(value: str) -> str:
    if not SUBMISSION.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value[:60]!r} is not a submission id (a UUID)")
    return value


def _sha256(value: str) -> str:
    if not SHA256.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a sha256 (64 hex digits)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m relion_spot.exchange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="upload jobs' results to the exchange bucket")
    out.add_argument("--project-dir", type=Path, default=Path.cwd())
    out.add_argument("--submission", type=_submission, action="append", required=True)
    out.add_argument("--s3-credentials", metavar="SOCKET", type=Path, required=True)
    into = commands.add_parser("import", help="a folder the lab uploaded, into a project")
    into.add_argument("--project-dir", type=Path, required=True)
    into.add_argument("--s3-credentials", metavar="SOCKET", type=Path, required=True)
    into.add_argument("--manifest-sha256", type=_sha256, required=True)
    args = parser.parse_args(argv)
    if args.command == "export":
        return export.run(args.project_dir, args.submission, args.s3_credentials)
    return imports.run(args.project_dir, args.s3_credentials, args.manifest_sha256)
