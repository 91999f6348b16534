"""The Class3D sbatch script: assets/slurm/class3d.sbatch filled in for one GPU count.

Launch line by GPU count:
  1 GPU  → ``relion_refine ... --gpu`` (one process: no MPI, nothing to combine).
  N GPUs → ``mpirun -n N+1 --mca plm ^slurm --mca ras ^slurm --bind-to none --oversubscribe
            relion_refine_mpi ... --gpu --dont_combine_weights_via_disc``: one leader rank that
            only coordinates plus one follower per GPU (RELION shares the node's GPUs out among
            the followers). Open MPI must not ask Slurm to launch or place ranks from inside the
            container (plm/ras ^slurm); the leader is idle, so oversubscribing its core is fine.
            Combining weights over MPI rather than through files keeps the classes' weight
            volumes off EFS.

Threads and pool (``threads_and_pool``): the job may land on any instance type of the group, so
sizing uses the group's smallest vCPU count. Each follower rank (the single process for 1 GPU)
gets --j = vCPUs ÷ GPUs threads, so the followers together use every vCPU once; the leader's
share is not counted (it sleeps while followers work). --pool = max(30, 5 x --j): the
benchmark's 30 particles for 6 threads, i.e. five particles per thread, never fewer than the
benchmark's 30. A --j or --pool parameter overrides the rule.

One launch line for every node: RELION runs from an Apptainer image (SIF) in the node's
/containers cache (``apptainer exec --bind /data,/scratch "$SIF" ...``), made once per image
source by assets/slurm/relion-image.sh under an exclusive lock, to a temporary name renamed into
place. A GPU node (cloud mode) adds ``--nv`` and ``--gpu`` and names its GPU image; the embedded
cloud (local mode) names the project's CPU build of the same RELION 5 recipe (assets/relion),
exported as a docker-archive. Nothing else differs (golden files).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal

from relion_spot import catalog
from relion_spot.node.stage_credentials import SOCKET as CREDENTIALS_SOCKET
from relion_spot.settings import Settings
from relion_spot.slurm.spec import GPU_PARTITION

from .parameters import Class3dParams, JobParameterError

Mode = Literal["cloud", "local"]
MODES: tuple[Mode, ...] = ("cloud", "local")

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "class3d.sbatch"
"""assets/slurm beside the package: in the repository and in the image (/opt/relion-spot)."""

MPI_OPTIONS: tuple[str, ...] = (
    "--mca", "plm", "^slurm", "--mca", "ras", "^slurm", "--bind-to", "none", "--oversubscribe",
)  # fmt: skip
CONTAINER_CACHE = "/containers"
"""The SIF cache: the EFS access point on every node; a shared host directory on the embedded
cloud's nodes."""
DEFAULT_IMAGE = "def:relion/relion.def:relion/cuda12.args"
"""The GPU image unless a deployment names its own (``relion_image``): the project's RELION 5
recipe (assets/relion) with CUDA 12 for compute capabilities 8.0/8.6/8.9/9.0, built in the
cluster by the image job on the CPU partition (relion_spot.jobs.image) into /containers, by
content digest, and checked there before any GPU job runs."""
LOCAL_IMAGE = f"docker-archive:{CONTAINER_CACHE}/relion-5.0.1-cpu.tar"
"""The embedded cloud's image: the project's CPU build of assets/relion, exported by
scripts/setup-docker.sh into the shared cache."""
IMAGE_SCRIPT = "/opt/relion-spot/assets/slurm/relion-image.sh"
CONTAINER_BINDS = "/data,/scratch"
SCRATCH_BIND = "/scratch"
"""What a job with a ``dataset`` binds besides its own job directory: no other project."""
SIF = "$SIF"
"""The image's SIF as the script names it (set by relion-image.sh at run time)."""
DATASET = "$DATASET"
"""Where a job's ``dataset`` is staged on the node's scratch, as the script names it (set from
relion_spot.jobs.dataset's answer at run time)."""
PROJECT = "$PWD"
"""The project on /data, as the script names it (the job runs there: #SBATCH --chdir)."""
JOB_DIR = "$JOB_DIR"
"""The job directory as the script names it: <output_dir>/jobNNN claimed by this job
(relion_spot.jobs.job_dir), the same on every attempt, so every attempt continues the same --o."""


@dataclass(frozen=True)
class NodeShape:
    """What the job's sizing needs to know about the nodes it may land on."""

    gpus: int
    vcpus: int
    """The smallest vCPU count among the group's instance types."""

    @classmethod
    def for_types(cls, instance_types: Sequence[str]) -> NodeShape:
        if not instance_types:
            raise JobParameterError("no instance types given for the GPU node group")
        unknown = [t for t in instance_types if t not in catalog.INSTANCE_TYPES]
        if unknown:
            raise JobParameterError(f"unknown instance type(s) {', '.join(unknown)}")
        types = [catalog.INSTANCE_TYPES[t] for t in instance_types]
        counts = {t.gpus for t in types}
        if len(counts) != 1 or 0 in counts:
            raise JobParameterError(
                f"instance types {', '.join(instance_types)} must all have the same GPU count"
            )
        return cls(gpus=counts.pop(), vcpus=min(t.vcpus for t in types))

    @classmethod
    def for_gpu_count(cls, gpus: int, settings: Settings | None = None) -> NodeShape:
        gpu_types = (settings or Settings()).gpu_types
        types = gpu_types.get(gpus) or catalog.DEFAULT_GPU_TYPES.get(gpus)
        if types is None:
            accepted = ", ".join(str(n) for n in catalog.SUPPORTED_GPU_COUNTS)
            raise JobParameterError(f"GPU count {gpus!r} is not valid: one of {accepted}")
        return cls.for_types(types)


def threads_and_pool(shape: NodeShape, params: Class3dParams) -> tuple[int, int]:
    """--j and --pool for the node: see the module docstring for the rule."""
    threads = params.j if params.j is not None else max(1, shape.vcpus // shape.gpus)
    pool = params.pool if params.pool is not None else max(30, 5 * threads)
    return threads, pool


def command_words(shape: NodeShape, params: Class3dParams, *, mode: Mode = "cloud") -> list[str]:
    """The fresh RELION command, word by word ($JOB_DIR is left for the shell to expand)."""
    if mode not in MODES:
        raise JobParameterError(f"mode {mode!r} is not valid: one of {', '.join(MODES)}")
    threads, pool = threads_and_pool(shape, params)
    gpu_passthrough = ["--nv"] if mode == "cloud" else []
    binds = ["--bind", CONTAINER_BINDS]
    if params.dataset is not None:
        # RELION runs in the data set on scratch; of /data it sees its own directory, bound in.
        binds = [
            "--bind", SCRATCH_BIND, "--bind", f"{PROJECT}/{JOB_DIR}:{DATASET}/{JOB_DIR}",
            "--pwd", DATASET,
        ]  # fmt: skip
    launcher = ["apptainer", "exec", *gpu_passthrough, *binds, SIF]
    if shape.gpus == 1:
        program = "relion_refine"
    else:
        launcher += ["mpirun", "-n", str(shape.gpus + 1), *MPI_OPTIONS]
        program = "relion_refine_mpi"
    args = [
        *("--o", f"{JOB_DIR}/run"),
        *params.refine_args(),
        *("--pool", str(pool), "--j", str(threads)),
    ]
    if mode == "cloud":
        args.append("--gpu")
    if params.dataset is None:
        args += ["--scratch_dir", params.scratch_dir]
    args += ["--pipeline_control", f"{JOB_DIR}/"]
    if shape.gpus > 1:
        args.append("--dont_combine_weights_via_disc")
    return [*launcher, program, *args]


def shell_word(word: str) -> str:
    if word.startswith((JOB_DIR, SIF, DATASET, PROJECT)):
        return f'"{word}"'
    return shlex.quote(word)


def format_command(words: Sequence[str]) -> str:
    """Shell text, one flag (with its value) per continuation line."""
    lines: list[list[str]] = [[]]
    for word in words:
        if (word.startswith("--") and lines[-1] and lines[-1][0] != "apptainer") or (
            word in ("mpirun", "relion_refine", "relion_refine_mpi") and lines[-1]
        ):
            lines.append([])
        lines[-1].append(shell_word(word))
    return " \\\n".join("  " + " ".join(line) for line in lines)


_IMAGE_SETUP = """\
# The RELION image, as a SIF in the node's cache: made once per image (relion-image.sh).
IMAGE={image}
SIF=$({script} "$IMAGE" {cache})"""


def image_setup(source: str) -> str:
    """The script lines that set $SIF: the image ``source`` as a SIF in the node's cache."""
    return _IMAGE_SETUP.format(
        image=shlex.quote(source), script=IMAGE_SCRIPT, cache=CONTAINER_CACHE
    )


_DATASET_SETUP = """
# The data set, from S3 straight to this node's NVMe (relion_spot.jobs.dataset): RELION runs
# there, and only its own directory, bound from the project, is on the shared file system.
DATASET=$({python} -I -m relion_spot.jobs.dataset {arguments})
mkdir -p "$DATASET/$JOB_DIR\""""
DATASET_PYTHON = "/opt/relion-spot/venv/bin/python"


def dataset_setup(params: Class3dParams) -> str:
    """The script lines that set $DATASET (none without a ``dataset``)."""
    if params.dataset is None:
        return ""
    words = ["--source", params.dataset]
    if params.dataset_sha256 is not None:
        words += ["--sha256", params.dataset_sha256]
    words += ["--particles", params.particles, "--reference", params.reference]
    words += ["--scratch", params.scratch_dir, "--s3-credentials", str(CREDENTIALS_SOCKET)]
    return _DATASET_SETUP.format(python=DATASET_PYTHON, arguments=shlex.join(words))


def render(
    target: Settings | int | NodeShape,
    params: Class3dParams | None = None,
    *,
    mode: Mode = "cloud",
    gpus: int | None = None,
    image: str | None = None,
) -> str:
    """The sbatch script for one cluster's GPU count.

    ``target``: a Settings (then ``gpus`` names which of its clusters), a GPU count (the default
    instance types) or a NodeShape. ``image``: the RELION image source; default DEFAULT_IMAGE in
    cloud mode, LOCAL_IMAGE in local mode.
    """
    params = params or Class3dParams()
    if isinstance(target, NodeShape):
        shape = target
    elif isinstance(target, Settings):
        count = gpus if gpus is not None else target.gpus[0]
        if count not in target.gpus:
            raise JobParameterError(
                f"GPU count {count} has no cluster in these settings (clusters: "
                f"{', '.join(str(n) for n in target.gpus)})"
            )
        shape = NodeShape.for_gpu_count(count, target)
    else:
        shape = NodeShape.for_gpu_count(target)
    words = command_words(shape, params, mode=mode)
    source = image or (DEFAULT_IMAGE if mode == "cloud" else LOCAL_IMAGE)
    template = Template(TEMPLATE_PATH.read_text())
    return template.substitute(
        gpus=shape.gpus,
        mode=mode,
        job_name=f"class3d-gpu{shape.gpus}",
        partition=GPU_PARTITION,
        project_dir=shlex.quote(params.project_dir),
        output_dir=params.output_dir,
        image_setup=image_setup(source) + dataset_setup(params),
        command=format_command(words),
    )
