"""A command run as a Slurm job's user in a node container, without a cluster.

What the embedded cloud's jobs see — the node image, the node's Apptainer flags, /data and the
image cache mounted, the job user, Slurm's job variables — for the steps that need RELION but not
a scheduler: making a synthetic data set, the RELION tests' runs of the job template, the
overhead benchmark. RELION itself runs as the jobs run it: ``apptainer exec`` of the SIF that
``relion-image.sh`` makes once in the cache.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..jobs.class3d import CONTAINER_CACHE, IMAGE_SCRIPT, LOCAL_IMAGE
from ..relion.synthetic import SyntheticSpec
from ..relion.tools import RELION_EXEC_ENV
from ..slurm.local import APPTAINER_ARGS, LOCAL_NODE_IMAGE
from ..slurm.local import CONTAINER_CACHE as HOST_CACHE

JOB_USER = "relion"
JOB_UID = 1000
PYTHON = "/opt/relion-spot/venv/bin/python"
"""The project's interpreter in the node image (run with -I, as the jobs run it)."""

RELION_THROUGH_SIF = (
    f'SIF=$({IMAGE_SCRIPT} "$IMAGE" {CONTAINER_CACHE}) && '
    f'export {RELION_EXEC_ENV}="apptainer exec --bind /data $SIF"'
)
"""Shell that makes (or finds) the SIF and has the project's RELION tools run through it."""


class JobContainerError(RuntimeError):
    """A command in a job container failed; the message carries its output's tail."""


def job_container(
    *,
    data_dir: Path,
    name: str | None = None,
    workdir: str = "/data",
    env: Mapping[str, str] | None = None,
    after: str = "",
    docker_options: Sequence[str] = (),
) -> list[str]:
    """``docker run`` words for a node container whose command (appended by the caller, as
    words) runs as the job user in ``workdir``; ``after`` is shell run as root once it ends,
    with its exit status in ``$code``. As the node entrypoint does, /dev/fuse is opened to the
    job user first."""
    variables = {"IMAGE": LOCAL_IMAGE, **(env or {})}
    as_job_user = (
        f"chmod 0666 /dev/fuse && cd {shlex.quote(workdir)} || exit; "
        f'runuser -u {JOB_USER} -- "$@"; code=$?; {after} exit $code'
    )
    return [
        "docker", "run", "--rm", *(("--name", name) if name else ()), *docker_options,
        *APPTAINER_ARGS,
        "-v", f"{data_dir.resolve()}:/data",
        "-v", f"{HOST_CACHE.resolve()}:{CONTAINER_CACHE}",
        *(arg for key, value in variables.items() for arg in ("-e", f"{key}={value}")),
        "--entrypoint", "bash", LOCAL_NODE_IMAGE, "-c", as_job_user, "node",
    ]  # fmt: skip


def synthetic_words(spec: SyntheticSpec, out: str) -> list[str]:
    """The synthetic generator's command line for ``spec`` (every figure, so nothing rests on
    the generator's defaults)."""
    return [
        PYTHON, "-I", "-m", "relion_spot.relion.synthetic", "--out", out,
        "--classes", str(spec.classes), "--particles-per-class", str(spec.particles_per_class),
        "--snr", repr(spec.snr), "--box", str(spec.box), "--angpix", repr(spec.angpix),
        "--micrographs", str(spec.micrographs),
        "--defocus-min", repr(spec.defocus_min_angstrom),
        "--defocus-max", repr(spec.defocus_max_angstrom),
        "--offset-sigma", repr(spec.offset_sigma_px),
        "--reference-lowpass", repr(spec.reference_lowpass_angstrom),
        "--seed", str(spec.seed),
    ]  # fmt: skip


def make_synthetic(
    spec: SyntheticSpec, data_dir: Path, project: str, *, timeout: float = 900
) -> Path:
    """The ground-truthed set in ``data_dir/project`` (replaced if present), generated in a node
    container as the job user with RELION 5 through the jobs' SIF; the project's directory."""
    target = data_dir / project
    if target.exists():
        shutil.rmtree(target)
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(data_dir, JOB_UID, JOB_UID)
    script = f'{RELION_THROUGH_SIF} && exec "$@"'
    done = subprocess.run(
        [*job_container(data_dir=data_dir), "bash", "-c", script, "synthetic",
         *synthetic_words(spec, f"/data/{project}")],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise JobContainerError(
            f"generating the particles failed:\n{(done.stderr or done.stdout)[-800:]}"
        )
    return target
