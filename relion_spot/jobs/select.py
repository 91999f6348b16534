"""The subset-selection job: assets/slurm/select.sbatch filled in with validated parameters.

``relion-spot submit select --project-dir /data/p --run Class3D/job005 --classes 1,3`` — the
particles of the chosen classes of a Class3D run (its newest complete iteration, or the one
named), as RELION's Select job writes them, ready for the next ``submit class3d --particles
Select/jobNNN/particles.star``. It runs on the CPU partition (relion_spot.relion.select).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from string import Template
from typing import Any

from relion_spot.slurm.spec import CPU_PARTITION

from .parameters import DATA_ROOT, JobParameterError, check_not_reserved, check_path

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "select.sbatch"
RUN_DIR = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}/job\d{3,6}$")
"""A job directory of the project as RELION numbers them, e.g. Class3D/job005."""
MAX_CLASSES = 50
"""The largest K a Class3D job accepts (relion_spot.jobs.parameters)."""


def check_project_dir(value: object) -> None:
    """A project directory under /data, absolute, without . or .. or empty parts, and not one
    of the cluster's own names."""
    check_path("project_dir", value)
    assert isinstance(value, str)
    parts = value.split("/")
    if not value.startswith(DATA_ROOT + "/") or any(p in ("", ".", "..") for p in parts[1:]):
        raise JobParameterError(
            f"parameter project_dir = {value!r} is not valid: a directory under {DATA_ROOT} "
            "(absolute, no . or .. or empty parts)"
        )
    check_not_reserved("project_dir", value)


@dataclass(frozen=True)
class SelectParams:
    project_dir: str
    """The project (a directory under /data) holding the run; the selection is written there."""
    run: str
    """The Class3D job directory to select from, relative to the project (Class3D/job005)."""
    classes: tuple[int, ...]
    """Class numbers to keep (1..K of that run)."""
    iteration: int | None = None
    """The run's iteration to read; None: its newest complete one."""

    def __post_init__(self) -> None:
        check_project_dir(self.project_dir)
        if not isinstance(self.run, str) or not RUN_DIR.fullmatch(self.run):
            raise JobParameterError(
                f"parameter run = {str(self.run)[:60]!r} is not valid: a job directory of the "
                "project, e.g. Class3D/job005"
            )
        classes = self.classes
        if (
            not isinstance(classes, tuple)
            or not classes
            or len(classes) > MAX_CLASSES
            or any(isinstance(c, bool) or not isinstance(c, int) for c in classes)
            or any(not 1 <= c <= MAX_CLASSES for c in classes)
        ):
            raise JobParameterError(
                f"parameter classes = {str(classes)[:60]!r} is not valid: class numbers from 1 "
                f"to {MAX_CLASSES}, e.g. 1,3"
            )
        if self.iteration is not None and (
            isinstance(self.iteration, bool)
            or not isinstance(self.iteration, int)
            or not 1 <= self.iteration <= 999
        ):
            raise JobParameterError(
                f"parameter iteration = {str(self.iteration)[:40]!r} is not valid: a whole "
                "number from 1 to 999 (or none: the newest complete)"
            )


SELECT_FIELDS = tuple(f.name for f in fields(SelectParams))


def _classes(value: object) -> object:
    """ "1,3" (a command line) or [1, 3] (a message) → (1, 3); anything else as given, for the
    dataclass to refuse by name."""
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            return value
    if isinstance(value, list):
        return tuple(value)
    return value


def select_from_mapping(values: Mapping[str, Any]) -> SelectParams:
    """SelectParams from a submission's parameters; unknown or missing names refused by name."""
    unknown = sorted(set(values) - set(SELECT_FIELDS))
    if unknown:
        raise JobParameterError(
            f"parameter {unknown[0][:60]!r} is not known for a selection: one of "
            + ", ".join(SELECT_FIELDS)
        )
    missing = [name for name in ("project_dir", "run", "classes") if name not in values]
    if missing:
        raise JobParameterError(
            "a selection needs " + ", ".join(missing) + " (e.g. --project-dir /data/p --run "
            "Class3D/job005 --classes 1,3)"
        )
    given = dict(values)
    given["classes"] = _classes(given["classes"])
    if isinstance(given.get("iteration"), str) and given["iteration"].isdigit():
        given["iteration"] = int(given["iteration"])
    return SelectParams(**given)


def select_arguments(params: SelectParams) -> list[str]:
    """The selection program's words (before ``--out``, which is the claimed job directory)."""
    words = ["--run", params.run, "--classes", ",".join(map(str, params.classes))]
    if params.iteration is not None:
        words += ["--iteration", str(params.iteration)]
    return words


def render_select(params: SelectParams) -> str:
    return Template(TEMPLATE_PATH.read_text()).substitute(
        partition=CPU_PARTITION,
        project_dir=shlex.quote(params.project_dir),
        arguments=shlex.join(select_arguments(params)),
    )
