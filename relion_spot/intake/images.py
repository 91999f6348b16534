"""The RELION image, made and checked on the CPU partition before a GPU job may start.

For each Class3D submission the drainer asks ``ImageChecks.prerequisite`` which job the GPU job
must wait for: none when the image is known to be made and checked (its ``.checked`` file is in
the cache, where the controller sees it, or an image job for it completed and slurmctld still
lists it); the image job already pending or running for it; or a new image job
(relion_spot.jobs.image). The GPU job depends on it with ``afterok`` and
``--kill-on-invalid-dep=yes``, so Slurm never powers up a GPU node for a job whose image failed.

``ImageChecks.failures`` finds the submissions whose job Slurm cancelled that way, for the
drainer to record as cancelled with a message naming the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from relion_spot.jobs.class3d import Mode
from relion_spot.jobs.image import render_image_job, sif_name

from .slurm import SlurmJobs

HELD = frozenset({"REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"})
"""Flags of a pending job that will not run until someone releases it."""
_DEPENDENCY_JOB = re.compile(r"afterok:(\d+)")


@dataclass(frozen=True)
class Prerequisite:
    job_id: str | None
    """The image job to wait for; None when the image is already made and checked."""
    note: str
    """For the submission's record."""


@dataclass
class ImageChecks:
    slurm: SlurmJobs
    image: str
    """The image source every Class3D job names (relion-image.sh's IMAGE)."""
    mode: Mode = "cloud"
    cache_dir: Path | None = None
    """Where the controller sees the nodes' /containers; None where it does not."""
    _sif: str | None = field(default=None, init=False)

    @property
    def sif(self) -> str:
        if self._sif is None:
            self._sif = sif_name(self.image)
        return self._sif

    def checked(self) -> bool:
        """The image's check passed and its record is where the controller sees the cache."""
        return self.cache_dir is not None and (self.cache_dir / f"{self.sif}.checked").is_file()

    def prerequisite(self) -> Prerequisite:
        """The image job a new GPU job waits for, submitting one if need be.

        Raises SlurmUnavailable (try later) or SlurmRefused (the image job was refused)."""
        if self.checked():
            return Prerequisite(None, f"RELION image {self.image} already made and checked")
        jobs = self.slurm.image_jobs(self.sif)
        if any(job.state == "COMPLETED" for job in jobs):
            return Prerequisite(None, f"RELION image {self.image} already made and checked")
        # One that may still end in success, so a GPU job can wait for it: not ended, not held
        # after a failed requeue (a budget hold stays live: the guard releases it in time).
        live = [job.job_id for job in jobs if not (job.ended or job.states & HELD)]
        if live:
            job_id = live[0]
        else:
            script = render_image_job(self.image, mode=self.mode)
            job_id = self.slurm.submit_image_job(script, self.sif)
        return Prerequisite(
            job_id,
            f"waits for Slurm job {job_id}, which makes and checks the RELION image "
            f"{self.image} on the CPU partition; if that fails, Slurm cancels this job "
            "before any GPU is launched",
        )

    def failures(self) -> dict[str, str]:
        """Submission id -> why Slurm cancelled its job: its image job failed, or (a campaign's
        later step) the step it waited for did not succeed."""
        reasons: dict[str, str] = {}
        failed = self.slurm.dependency_failures()
        steps = set(self.slurm.submitted().values()) if failed else set()
        for sid, (job_id, dependency) in failed.items():
            found = _DEPENDENCY_JOB.search(dependency)
            if found and found.group(1) in steps:
                reasons[sid] = (
                    f"Slurm cancelled job {job_id}: the campaign step it waited for (Slurm job "
                    f"{found.group(1)}) did not succeed"
                )
                continue
            check = f"Slurm job {found.group(1)}" if found else "the image job"
            log_name = f"relion-image-{found.group(1)}.out" if found else "relion-image-*.out"
            reasons[sid] = (
                f"Slurm cancelled job {job_id} before any GPU was launched: the RELION image "
                f"{self.image} failed its check on the CPU partition ({check}; its log is "
                f"{log_name} in the image cache)"
            )
        return reasons
