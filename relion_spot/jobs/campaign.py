"""A campaign's later steps: assets/slurm/refine3d.sbatch and postprocess.sbatch filled in.

A campaign is Class3D (relion_spot.jobs.class3d, as any Class3D), then a 3D auto-refine of the
class it picks (``best`` by relion_spot.relion.campaign's rule, or the lab's number), then a
PostProcess of the refined map. Each later step names the step before it by that step's
submission id; the intake submits each after the one before it (Slurm's afterok).

The refinement's launch line is the Class3D's (apptainer exec from the node's SIF cache; ``--nv``
and ``--gpu`` on a GPU node only) with ``mpirun -n max(3, GPUs + 1) relion_refine_mpi
--auto_refine --split_random_halves``: an auto-refine refines two half sets on two followers,
which share the GPUs when there are fewer than two. Each follower gets vCPUs ÷ followers
threads. Its flags are the Class3D's where RELION's auto-refine takes them (diameter, initial
low-pass, sampling, offsets, symmetry, CTF, solvent flattening), and RELION's auto-refine
defaults otherwise: local searches from healpix order ``local_healpix_order`` (4, 3.7°) and the
halves joined below 40 Å.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from relion_spot.slurm.spec import CPU_PARTITION, GPU_PARTITION

from .class3d import (
    CONTAINER_BINDS,
    DEFAULT_IMAGE,
    JOB_DIR,
    LOCAL_IMAGE,
    MODES,
    MPI_OPTIONS,
    SIF,
    Mode,
    NodeShape,
    format_command,
    image_setup,
)
from .parameters import Class3dParams, JobParameterError, from_mapping, number_word

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "slurm"
REFINE_TEMPLATE = ASSETS / "refine3d.sbatch"
POSTPROCESS_TEMPLATE = ASSETS / "postprocess.sbatch"
LOW_RESOL_JOIN_HALVES_ANGSTROM = 40
"""RELION's default: below this resolution the two halves are averaged, so both start alike."""
MAX_CLASS = 50
MAX_LOCAL_HEALPIX_ORDER = 6
"""0.9°: finer than any refinement a lab runs on this cluster needs; a bound on what one
submission can make the GPUs search."""
LAST_STEP_JOB_PREFIX = "postprocess-"
"""The PostProcess step's job name is this and the campaign id's first 8 characters: the job
record writer (relion_spot.cost.jobcomp) sees only Slurm's view of a job, and tells the lab the
campaign is done when that job completes."""


def check_refine_class(value: object) -> str:
    """``best`` or a class number 1..50, as text (what the job script passes on)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CLASS:
        return str(value)
    if isinstance(value, str) and (
        value == "best"
        or (
            value.isascii() and value.isdigit() and len(value) <= 3 and 1 <= int(value) <= MAX_CLASS
        )
    ):
        return value if value == "best" else str(int(value))
    raise JobParameterError(
        f"parameter refine_class = {str(value)[:40]!r} is not valid: 'best' or a class number "
        f"from 1 to {MAX_CLASS}"
    )


@dataclass(frozen=True)
class RefineStep:
    """What the auto-refine step needs beyond the Class3D it follows."""

    class3d: Class3dParams
    class3d_submission: str
    refine_class: str = "best"
    local_healpix_order: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "refine_class", check_refine_class(self.refine_class))
        if self.refine_class != "best" and int(self.refine_class) > self.class3d.K:
            raise JobParameterError(
                f"parameter refine_class = {self.refine_class} is not valid: a class of the "
                f"campaign's Class3D (K={self.class3d.K}), or 'best'"
            )
        order = self.local_healpix_order
        if (
            isinstance(order, bool)
            or not isinstance(order, int)
            or not self.class3d.healpix_order <= order <= MAX_LOCAL_HEALPIX_ORDER
        ):
            raise JobParameterError(
                f"parameter local_healpix_order = {str(order)[:20]!r} is not valid: a whole "
                f"number from the Class3D's healpix_order ({self.class3d.healpix_order}) to "
                f"{MAX_LOCAL_HEALPIX_ORDER}"
            )


def followers(shape: NodeShape) -> int:
    """The half-set followers of an auto-refine: one per GPU, and never fewer than two."""
    return max(2, shape.gpus)


def refine_words(shape: NodeShape, step: RefineStep, *, mode: Mode = "cloud") -> list[str]:
    """The fresh auto-refine command, word by word ($JOB_DIR and $SIF left to the shell)."""
    if mode not in MODES:
        raise JobParameterError(f"mode {mode!r} is not valid: one of {', '.join(MODES)}")
    p = step.class3d
    ranks = followers(shape) + 1
    threads = p.j if p.j is not None else max(1, shape.vcpus // followers(shape))
    pool = p.pool if p.pool is not None else max(30, 5 * threads)
    gpu_passthrough = ["--nv"] if mode == "cloud" else []
    words = [
        "apptainer", "exec", *gpu_passthrough, "--bind", CONTAINER_BINDS, SIF,
        "mpirun", "-n", str(ranks), *MPI_OPTIONS, "relion_refine_mpi",
        "--o", f"{JOB_DIR}/run", "--auto_refine", "--split_random_halves",
        "--i", f"{JOB_DIR}/particles.star", "--ref", f"{JOB_DIR}/reference.mrc",
        "--ini_high", number_word(p.ini_high),
    ]  # fmt: skip
    if p.ctf:
        words.append("--ctf")
    words += ["--particle_diameter", number_word(p.particle_diameter)]
    words += [f"--{name}" for name in ("flatten_solvent", "zero_mask") if getattr(p, name)]
    words += [
        "--oversampling", str(p.oversampling), "--healpix_order", str(p.healpix_order),
        "--auto_local_healpix_order", str(step.local_healpix_order),
        "--offset_range", number_word(p.offset_range), "--offset_step", number_word(p.offset_step),
        "--sym", p.sym, "--low_resol_join_halves", str(LOW_RESOL_JOIN_HALVES_ANGSTROM),
    ]  # fmt: skip
    words += [f"--{name}" for name in ("norm", "scale") if getattr(p, name)]
    words += ["--random_seed", str(p.random_seed), "--pool", str(pool), "--j", str(threads)]
    if mode == "cloud":
        words.append("--gpu")
    words += ["--scratch_dir", p.scratch_dir, "--pipeline_control", f"{JOB_DIR}/"]
    words.append("--dont_combine_weights_via_disc")
    return words


def render_refine(
    shape: NodeShape, step: RefineStep, *, mode: Mode = "cloud", image: str | None = None
) -> str:
    source = image or (DEFAULT_IMAGE if mode == "cloud" else LOCAL_IMAGE)
    return Template(REFINE_TEMPLATE.read_text()).substitute(
        gpus=shape.gpus,
        mode=mode,
        job_name=f"refine3d-gpu{shape.gpus}",
        partition=GPU_PARTITION,
        project_dir=shlex.quote(step.class3d.project_dir),
        class3d_submission=shlex.quote(step.class3d_submission),
        refine_class=shlex.quote(step.refine_class),
        image_setup=image_setup(source),
        command=format_command(refine_words(shape, step, mode=mode)),
    )


def render_postprocess(
    project_dir: str,
    refine_submission: str,
    *,
    campaign_id: str,
    mode: Mode = "cloud",
    image: str | None = None,
) -> str:
    if mode not in MODES:
        raise JobParameterError(f"mode {mode!r} is not valid: one of {', '.join(MODES)}")
    source = image or (DEFAULT_IMAGE if mode == "cloud" else LOCAL_IMAGE)
    return Template(POSTPROCESS_TEMPLATE.read_text()).substitute(
        mode=mode,
        job_name=f"{LAST_STEP_JOB_PREFIX}{campaign_id[:8]}",
        partition=CPU_PARTITION,
        project_dir=shlex.quote(project_dir),
        refine_submission=shlex.quote(refine_submission),
        image_setup=image_setup(source),
    )


STEPS = ("class3d", "refine3d", "postprocess")
CAMPAIGN_FIELDS = ("refine_class", "local_healpix_order")
"""A campaign's own parameters; every other name is the Class3D's (relion_spot.jobs.parameters)."""


def step_submission_id(campaign_id: str, step: str) -> str:
    """A later step's submission id: derived from the campaign's (a name-based UUID), so a
    drain that is interrupted and runs again finds the same step's job in Slurm by its comment,
    and the step's record is where any client looks for it. The Class3D step is the campaign's
    own id."""
    if step == STEPS[0]:
        return campaign_id
    return str(uuid.uuid5(uuid.UUID(campaign_id), step))


@dataclass(frozen=True)
class CampaignParams:
    """Class3D → 3D auto-refine of the picked class → PostProcess, as one submission."""

    submission_id: str
    class3d: Class3dParams
    refine_class: str = "best"
    local_healpix_order: int = 4

    def __post_init__(self) -> None:
        refuse_continuation(self.class3d.continue_from)
        if self.class3d.dataset is not None:
            raise JobParameterError(
                "parameter dataset is not valid in a campaign: its 3D refinement reads the "
                "selected particles from the project on /data; stage the set into the project "
                "(submit stage) or classify it with submit class3d --dataset"
            )
        step = self.refine_step
        object.__setattr__(self, "refine_class", step.refine_class)

    @property
    def refine_step(self) -> RefineStep:
        return RefineStep(
            class3d=self.class3d,
            class3d_submission=self.submission_id,
            refine_class=self.refine_class,
            local_healpix_order=self.local_healpix_order,
        )

    def step_id(self, step: str) -> str:
        return step_submission_id(self.submission_id, step)


def refuse_continuation(value: object) -> None:
    if value is not None:
        raise JobParameterError(
            f"parameter continue_from = {str(value)[:60]!r} is not valid in a campaign, which "
            "classifies particles from the start; continue a Class3D with submit class3d "
            "--continue-from"
        )


def campaign_from_mapping(values: Mapping[str, Any], submission_id: str) -> CampaignParams:
    """A campaign's parameters from a submission's: its own two, the rest the Class3D's (checked
    as any Class3D submission's, confined to /data)."""
    refuse_continuation(values.get("continue_from"))
    own = {name: values[name] for name in CAMPAIGN_FIELDS if name in values}
    order = own.get("local_healpix_order", 4)
    if isinstance(order, str) and order.isascii() and order.isdigit() and len(order) <= 2:
        own["local_healpix_order"] = int(order)
    class3d = from_mapping({k: v for k, v in values.items() if k not in CAMPAIGN_FIELDS})
    class3d.check_confined()
    return CampaignParams(submission_id=submission_id, class3d=class3d, **own)
