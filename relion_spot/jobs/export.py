"""The export job: assets/slurm/export.sbatch filled in with validated parameters.

``relion-spot pull JOB|CAMPAIGN`` sends one: a CPU-partition job that writes the named jobs'
results into the cluster's results exchange (relion_spot.exchange.export), from where the lab's
CLI downloads them. No GPU is paid to copy files, and the job holds no credentials of its own:
the node's broker hands it a session that may write only under ``out/<its submission id>/``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from string import Template
from typing import Any

from relion_spot.exchange.cli import SUBMISSION
from relion_spot.exchange.export import MAX_JOBS
from relion_spot.node.stage_credentials import SOCKET as CREDENTIALS_SOCKET
from relion_spot.slurm.spec import CPU_PARTITION

from .parameters import JobParameterError
from .select import check_project_dir

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "export.sbatch"


@dataclass(frozen=True)
class ExportParams:
    project_dir: str
    """The project (a directory under /data) whose jobs are exported."""
    submissions: tuple[str, ...]
    """The submission ids of the jobs to export (each found by its job directory's claim)."""

    def __post_init__(self) -> None:
        check_project_dir(self.project_dir)
        chosen = self.submissions
        if (
            not isinstance(chosen, tuple)
            or not 1 <= len(chosen) <= MAX_JOBS
            or len(set(chosen)) != len(chosen)
            or any(not isinstance(s, str) or not SUBMISSION.fullmatch(s) for s in chosen)
        ):
            raise JobParameterError(
                f"parameter submissions = {str(chosen)[:120]!r} is not valid: 1 to {MAX_JOBS} "
                "different submission ids (UUIDs) of the project's jobs"
            )


EXPORT_FIELDS = tuple(f.name for f in fields(ExportParams))


def export_from_mapping(values: Mapping[str, Any]) -> ExportParams:
    """ExportParams from a submission's parameters; unknown or missing names refused by name."""
    unknown = sorted(set(values) - set(EXPORT_FIELDS))
    if unknown:
        raise JobParameterError(
            f"parameter {unknown[0][:60]!r} is not known for an export: one of "
            + ", ".join(EXPORT_FIELDS)
        )
    missing = [name for name in EXPORT_FIELDS if name not in values]
    if missing:
        raise JobParameterError("an export needs " + ", ".join(missing))
    given = dict(values)
    if isinstance(given["submissions"], list):
        given["submissions"] = tuple(given["submissions"])
    return ExportParams(**given)


def render_export(params: ExportParams) -> str:
    words = ["--project-dir", params.project_dir]
    for submission in params.submissions:
        words += ["--submission", submission]
    words += ["--s3-credentials", str(CREDENTIALS_SOCKET)]
    return Template(TEMPLATE_PATH.read_text()).substitute(
        partition=CPU_PARTITION,
        project_dir=shlex.quote(params.project_dir),
        arguments=shlex.join(words),
    )
