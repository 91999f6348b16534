"""The image job: assets/slurm/image.sbatch filled in for one RELION image source.

A GPU job's image is made (pulled, or built from the project's definition) and checked
(``relion_refine --version``; CUDA acceleration and cuFFT for a GPU image) on the CPU partition
first, by this job; the Class3D job depends on it. So a bad image is a failed CPU job of a few
cents and a cancelled GPU job that never launched a GPU, with a message naming the image, never
a GPU node that boots and dies.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from string import Template

from relion_spot.slurm.spec import CPU_PARTITION

from .class3d import CONTAINER_CACHE, IMAGE_SCRIPT, Mode

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "image.sbatch"
SCRIPT_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "relion-image.sh"
"""relion-image.sh beside the package (in the repository and at IMAGE_SCRIPT in the image)."""


class ImageSourceError(ValueError):
    """The image source names nothing relion-image.sh can make (e.g. a missing definition)."""


def render_image_job(image: str, *, mode: Mode = "cloud", cache: str = CONTAINER_CACHE) -> str:
    """The image job's script: cloud mode checks for CUDA, the embedded cloud's CPU image not."""
    template = Template(TEMPLATE_PATH.read_text())
    return template.substitute(
        partition=CPU_PARTITION,
        cache=shlex.quote(cache),
        image=shlex.quote(image),
        script=IMAGE_SCRIPT,
        cuda_flag="--cuda " if mode == "cloud" else "",
    )


def sif_name(image: str, *, script: Path = SCRIPT_PATH) -> str:
    """The file name relion-image.sh gives the image's SIF in the cache (for a definition, by
    content digest): asked of the script itself, so the two can never disagree."""
    done = subprocess.run(
        ["bash", str(script), "--name", image, CONTAINER_CACHE],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"relion-image.sh exited {done.returncode}"
        raise ImageSourceError(reason)
    return done.stdout.strip()
