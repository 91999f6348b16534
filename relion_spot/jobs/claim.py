"""``python -m relion_spot.jobs.claim --type Class3D``: print this Slurm job's own directory in
the project (the current directory), claiming a newly numbered one on the job's first attempt.
What the job scripts run first; the rules are relion_spot.jobs.job_dir's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .job_dir import JobDirError, claim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.jobs.claim",
        description="Print this Slurm job's own directory in the project (claiming one if new).",
    )
    parser.add_argument("--type", required=True, help="RELION job type directory, e.g. Class3D")
    parser.add_argument("--project-dir", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    try:
        result = claim(args.project_dir, args.type, os.environ)
    except (JobDirError, OSError) as err:
        print(f"claim: {err}", file=sys.stderr)
        return 2
    print(result.directory.relative_to(args.project_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
