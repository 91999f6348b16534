"""The staging job: assets/slurm/stage.sbatch filled in with validated parameters.

The benchmark dataset (47 GiB) is fetched by a batch job on the CPU partition, so the lab never
needs a shell on the cluster and no GPU instance is paid for a download
(``relion-spot submit stage``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from string import Template
from typing import Any

from relion_spot.node.stage_credentials import SOCKET as STAGE_CREDENTIALS_SOCKET
from relion_spot.slurm.spec import CPU_PARTITION
from relion_spot.staging import BENCHMARK_URL

from .parameters import DATASET_SOURCE, JobParameterError, check_not_reserved, check_path

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "stage.sbatch"
DATA_DIR = PurePosixPath("/data")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StageParams:
    dest: str = "/data/relion_benchmark"
    """Where the dataset goes: a directory under /data (the shared file system)."""
    source: str = BENCHMARK_URL
    """An http(s):// URL or s3://bucket/key of the tarball."""
    sha256: str | None = None
    expect_files: int | None = None

    def __post_init__(self) -> None:
        check_path("dest", self.dest)
        dest = PurePosixPath(self.dest)
        if (
            not isinstance(self.dest, str)
            or not dest.is_absolute()
            or ".." in dest.parts
            or dest == DATA_DIR
            or not dest.is_relative_to(DATA_DIR)
        ):
            raise JobParameterError(
                f"parameter dest = {self.dest!r} is not valid: a directory under /data, "
                "e.g. /data/relion_benchmark"
            )
        check_not_reserved("dest", self.dest)
        if (
            not isinstance(self.source, str)
            or not re.match(r"^(https?|s3)://\S+$", self.source)
            or (
                self.source.startswith("s3://")
                and (not DATASET_SOURCE.fullmatch(self.source) or self.source.endswith("/"))
            )
        ):
            raise JobParameterError(
                f"parameter source = {str(self.source)[:80]!r} is not valid: an http(s):// URL or "
                "s3://bucket/key (ASCII letters, digits and _ . / + @ = - in the key)"
            )
        if self.sha256 is not None and not _SHA256.match(str(self.sha256)):
            raise JobParameterError(
                f"parameter sha256 = {self.sha256!r} is not valid: 64 lowercase hex digits"
            )
        if self.expect_files is not None and (
            isinstance(self.expect_files, bool)
            or not isinstance(self.expect_files, int)
            or self.expect_files < 1
        ):
            raise JobParameterError(
                f"parameter expect_files = {self.expect_files!r} is not valid: a whole number "
                "of at least 1"
            )


STAGE_FIELDS = tuple(f.name for f in fields(StageParams))


def stage_from_mapping(values: Mapping[str, Any]) -> StageParams:
    """StageParams from a submission's parameters; unknown names are refused by name."""
    unknown = sorted(set(values) - set(STAGE_FIELDS))
    if unknown:
        raise JobParameterError(
            f"parameter {unknown[0]!r} is not known for staging: one of {', '.join(STAGE_FIELDS)}"
        )
    return StageParams(**dict(values))


def render_stage(params: StageParams) -> str:
    words = ["--dest", params.dest, "--source", params.source]
    if params.sha256:
        words += ["--sha256", params.sha256]
    if params.expect_files is not None:
        words += ["--expect-files", str(params.expect_files)]
    if params.source.startswith("s3://"):
        words += ["--s3-credentials", str(STAGE_CREDENTIALS_SOCKET)]
    return Template(TEMPLATE_PATH.read_text()).substitute(
        partition=CPU_PARTITION, arguments=shlex.join(words)
    )
