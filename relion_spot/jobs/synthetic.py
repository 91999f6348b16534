"""The synthetic-set job: assets/slurm/synthetic.sbatch filled in with validated parameters.

``relion-spot submit synthetic --project-dir /data/try --classes 2 --particles-per-class 100``
makes a ground-truthed particle set (relion_spot.relion.synthetic) in a new project on the
cluster, with the cluster's own RELION image on the CPU partition: a lab can try the cluster,
and the selftest can prove it, without bringing data. A Class3D run on the set reports its
accuracy against the truth (``truth_accuracy`` in its progress).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from string import Template
from typing import Any

from relion_spot.relion.synthetic import SyntheticSpec
from relion_spot.slurm.spec import CPU_PARTITION

from .class3d import DEFAULT_IMAGE, LOCAL_IMAGE, Mode, image_setup
from .parameters import JobParameterError
from .select import check_project_dir

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "synthetic.sbatch"
MAX_PARTICLES = 20_000
"""A set for trying the cluster: box 40 images, a few minutes of one CPU node at most."""


@dataclass(frozen=True)
class SyntheticParams:
    project_dir: str
    """A new (or empty) project under /data: the set is written there."""
    classes: int = 2
    particles_per_class: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_project_dir(self.project_dir)
        for name in ("classes", "particles_per_class", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise JobParameterError(
                    f"parameter {name} = {str(value)[:40]!r} is not valid: a whole number"
                )
        problems = self.spec.problems()
        if problems:
            raise JobParameterError(f"parameter {problems[0]}")
        if self.spec.particles > MAX_PARTICLES or self.seed >= 2**32:
            raise JobParameterError(
                f"parameters classes x particles_per_class = {self.spec.particles} is not "
                f"valid: at most {MAX_PARTICLES} particles, seed below 2^32"
            )

    @property
    def spec(self) -> SyntheticSpec:
        return SyntheticSpec(
            classes=self.classes, particles_per_class=self.particles_per_class, seed=self.seed
        )


SYNTHETIC_FIELDS = tuple(f.name for f in fields(SyntheticParams))


def synthetic_from_mapping(values: Mapping[str, Any]) -> SyntheticParams:
    """SyntheticParams from a submission's parameters (numbers as text from a command line);
    unknown or missing names refused by name."""
    unknown = sorted(set(values) - set(SYNTHETIC_FIELDS))
    if unknown:
        raise JobParameterError(
            f"parameter {unknown[0][:60]!r} is not known for a synthetic set: one of "
            + ", ".join(SYNTHETIC_FIELDS)
        )
    if "project_dir" not in values:
        raise JobParameterError("a synthetic set needs project_dir (e.g. --project-dir /data/try)")
    given: dict[str, Any] = {
        name: int(value) if isinstance(value, str) and value.isdigit() else value
        for name, value in values.items()
        if name != "project_dir"
    }
    return SyntheticParams(project_dir=values["project_dir"], **given)


def render_synthetic(
    params: SyntheticParams, *, mode: Mode = "cloud", image: str | None = None
) -> str:
    spec = params.spec
    words = [
        "--classes", str(spec.classes), "--particles-per-class", str(spec.particles_per_class),
        "--seed", str(spec.seed),
    ]  # fmt: skip
    source = image or (DEFAULT_IMAGE if mode == "cloud" else LOCAL_IMAGE)
    return Template(TEMPLATE_PATH.read_text()).substitute(
        partition=CPU_PARTITION,
        project_dir=shlex.quote(params.project_dir),
        image_setup=image_setup(source),
        arguments=shlex.join(words),
    )


def class3d_parameters(params: SyntheticParams, iterations: int) -> dict[str, Any]:
    """A Class3D of the set that classifies it: the benchmark's flags scaled to its small box
    (those the demo and the selftest submit)."""
    spec = params.spec
    return {
        "project_dir": params.project_dir,
        "particles": "particles.star",
        "reference": "reference.mrc",
        "K": spec.classes,
        "iter": iterations,
        "ini_high": round(2.5 * 2 * spec.angpix),
        "particle_diameter": spec.particle_diameter_angstrom,
        "offset_range": 2,
        "offset_step": 1,
        "j": 2,
        "pool": 10,
    }
