"""The import job: assets/slurm/import.sbatch filled in with validated parameters.

``relion-spot stage FOLDER --project-dir /data/p`` uploads the lab's folder to the exchange
bucket under ``in/<submission id>/`` and sends one: a CPU-partition job that copies it into the
project (relion_spot.exchange.imports). The job holds no credentials of its own: the node's
broker hands it a session that may read only under ``in/<its submission id>/``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from string import Template
from typing import Any

from relion_spot.exchange.cli import SHA256
from relion_spot.node.stage_credentials import SOCKET as CREDENTIALS_SOCKET
from relion_spot.slurm.spec import CPU_PARTITION

from .parameters import JobParameterError
from .select import check_project_dir

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "import.sbatch"


@dataclass(frozen=True)
class ImportParams:
    project_dir: str
    """The project (a directory under /data, made if new) the folder's files go into."""
    manifest_sha256: str
    """The sha256 of the manifest the lab uploaded: the import reads that manifest or none."""

    def __post_init__(self) -> None:
        check_project_dir(self.project_dir)
        if not isinstance(self.manifest_sha256, str) or not SHA256.fullmatch(self.manifest_sha256):
            raise JobParameterError(
                f"parameter manifest_sha256 = {str(self.manifest_sha256)[:80]!r} is not valid: "
                "64 lowercase hex digits"
            )


IMPORT_FIELDS = tuple(f.name for f in fields(ImportParams))


def import_from_mapping(values: Mapping[str, Any]) -> ImportParams:
    """ImportParams from a submission's parameters; unknown or missing names refused by name."""
    unknown = sorted(set(values) - set(IMPORT_FIELDS))
    if unknown:
        raise JobParameterError(
            f"parameter {unknown[0][:60]!r} is not known for an import: one of "
            + ", ".join(IMPORT_FIELDS)
        )
    missing = [name for name in IMPORT_FIELDS if name not in values]
    if missing:
        raise JobParameterError(
            "an import needs " + ", ".join(missing) + " (relion-spot stage sends both)"
        )
    return ImportParams(**dict(values))


def render_import(params: ImportParams) -> str:
    words = ["--project-dir", params.project_dir, "--s3-credentials", str(CREDENTIALS_SOCKET)]
    words += ["--manifest-sha256", params.manifest_sha256]
    return Template(TEMPLATE_PATH.read_text()).substitute(
        partition=CPU_PARTITION, arguments=shlex.join(words)
    )
