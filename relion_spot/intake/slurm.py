"""The intake's Slurm commands: sbatch (submit, tagged with the submission id), squeue (which
job, if any, already carries a submission id) and scancel (a user's cancel request).

Every job the intake submits carries ``--comment=relion-spot:<submission id>``, and in its
environment (sbatch exports its own) RELION_SPOT_SUBMISSION_ID and the names the job's progress
reporter needs to find its intake table item (relion_spot.relion.progress). squeue with
``--states=all`` lists pending, running and finished jobs alike, so a job submitted by a drain
that crashed before recording it is found again, for as long as slurmctld keeps finished jobs
(MinJobAge; StateSaveLocation keeps them across a controller restart). The commands are command
lines from the environment, so tests and the embedded cloud can point them anywhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..slurm import squeue
from ..slurm.squeue import SlurmJob
from .config import SUBMISSION_ID_ENV

log = logging.getLogger(__name__)

COMMENT_PREFIX = "relion-spot:"
IMAGE_COMMENT_PREFIX = "relion-spot-image:"
"""The image job's comment: this prefix and its SIF's name (relion_spot.jobs.image); never taken
for a submission's job, whose comment starts with COMMENT_PREFIX."""
DEPENDENCY_FAILED = "DependencyNeverSatisfied"
"""squeue's reason for a job Slurm cancelled because a job it depended on failed."""
SQUEUE_TIMEOUT_SECONDS = 30
SBATCH_TIMEOUT_SECONDS = 90
SCANCEL_TIMEOUT_SECONDS = 30
"""sbatch retries on its own while slurmctld is busy; past this the outcome is unknown."""
REFUSED = "Batch job submission failed:"
TRANSIENT_MARKERS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connection failure",
    "zero bytes were transmitted",
    "temporarily",
    "try again",
)
"""sbatch errors after which the job may or may not exist, or that pass: never a rejection."""
CONTROLLER_ONLY_ENV_PREFIXES = (
    "AWS_CONTAINER_",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
"""Credentials, never passed to jobs (sbatch exports the submitting environment into the
job's): the controller task's credential endpoint and any keys in the environment (the embedded
cloud's). Jobs hold no AWS credentials; what they report goes through the node's forwarder."""


class SlurmUnavailable(RuntimeError):
    """Slurm did not answer, or answered in a way that leaves the outcome unknown: try later."""


class SlurmRefused(RuntimeError):
    """sbatch refused the job outright (no job was created); the message is Slurm's."""


def comment_for(submission_id: str) -> str:
    return f"{COMMENT_PREFIX}{submission_id}"


def submission_of(comment: str) -> str | None:
    """The submission id a job's comment names, if it is an intake job's comment."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    return comment.removeprefix(COMMENT_PREFIX).strip()


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class SlurmJobs:
    sbatch: Sequence[str] = ("sbatch",)
    squeue: Sequence[str] = ("squeue",)
    scancel: Sequence[str] = ("scancel",)
    job_env: Mapping[str, str] | None = None
    """Variables every submitted job gets besides the submission id (e.g. the intake table's
    name and region); put in sbatch's environment, which it exports into the job's."""
    env: Mapping[str, str] | None = None
    """The environment the commands (and so the submitted jobs) get; default this process's,
    without the controller-only variables."""

    def _environment(self) -> dict[str, str]:
        source = os.environ if self.env is None else self.env
        return {k: v for k, v in source.items() if not k.startswith(CONTROLLER_ONLY_ENV_PREFIXES)}

    def _run(
        self,
        argv: list[str],
        *,
        stdin: str | None,
        timeout: float,
        extra_env: Mapping[str, str] | None = None,
    ) -> tuple[int, str, str]:
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                env={**self._environment(), **(extra_env or {})},
            )
        except FileNotFoundError:
            raise SlurmUnavailable(f"{argv[0]}: command not found") from None
        except PermissionError:
            raise SlurmUnavailable(f"{argv[0]}: not executable") from None
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{argv[0]}: no answer within {timeout:g} s") from None
        return done.returncode, done.stdout, done.stderr

    def submitted(self) -> dict[str, str]:
        """Submission id -> Slurm job id, for every job (in any state) the intake submitted."""
        return _carriers(self.listed())

    def find(self, submission_id: str) -> str | None:
        """The Slurm job already carrying this submission id, if slurmctld still knows one."""
        return self.submitted().get(submission_id)

    def submit(self, script: str, submission_id: str, *, after: str | None = None) -> str:
        """sbatch the script (on stdin) tagged with the submission id; returns the job id.
        ``after``: a job (the image job) this one starts only after it succeeded; if it fails,
        Slurm cancels this one (--kill-on-invalid-dep) before any node is launched for it."""
        options = [f"--comment={comment_for(submission_id)}"]
        if after is not None:
            options += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
        return self._sbatch(script, options, job_variables(submission_id, self.job_env or {}))

    def submit_image_job(self, script: str, sif: str) -> str:
        """sbatch the image job for the SIF named ``sif``; returns the job id."""
        return self._sbatch(script, [f"--comment={IMAGE_COMMENT_PREFIX}{sif}"], {})

    def _sbatch(self, script: str, options: list[str], extra_env: Mapping[str, str]) -> str:
        argv = [*self.sbatch, "--parsable", *options]
        code, out, err = self._run(
            argv, stdin=script, timeout=SBATCH_TIMEOUT_SECONDS, extra_env=extra_env
        )
        if code != 0:
            text = _one_line(err or out) or f"sbatch exited {code} and said nothing"
            lowered = text.lower()
            if REFUSED.lower() in lowered and not any(m in lowered for m in TRANSIENT_MARKERS):
                raise SlurmRefused(text.split(REFUSED, 1)[-1].strip() or text)
            raise SlurmUnavailable(f"sbatch exited {code}: {text}")
        first = out.strip().splitlines()[0] if out.strip() else ""
        job_id = first.split(";", 1)[0].strip()
        if not job_id.isdigit():
            raise SlurmUnavailable(f"sbatch printed {_one_line(out)!r}, not a job id")
        return job_id

    def image_jobs(self, sif: str) -> list[SlurmJob]:
        """Every image job for the SIF named ``sif`` that slurmctld still lists, oldest first."""
        comment = f"{IMAGE_COMMENT_PREFIX}{sif}"
        return [job for job in self.listed() if job.comment == comment]

    def dependency_failures(self) -> dict[str, tuple[str, str]]:
        """Submission id -> (job id, dependency text) for every intake job Slurm cancelled
        because a job it depended on (its image job) failed. Only the job carrying the
        submission counts: another job with its comment (a comment is its owner's to write)
        says nothing about it."""
        listed = self.listed()
        by_id = {job.job_id: job for job in listed}
        return {
            submission_id: (job_id, by_id[job_id].dependency)
            for submission_id, job_id in _carriers(listed).items()
            if by_id[job_id].state == "CANCELLED" and by_id[job_id].reason == DEPENDENCY_FAILED
        }

    def listed(self) -> list[SlurmJob]:
        """Every job slurmctld lists, in any state, oldest first (squeue --json)."""
        argv = [*self.squeue, *squeue.command()[1:]]
        code, out, err = self._run(argv, stdin=None, timeout=SQUEUE_TIMEOUT_SECONDS)
        if code != 0:
            raise SlurmUnavailable(f"squeue exited {code}: {_one_line(err or out)}")
        try:
            return squeue.parse(out)
        except squeue.SqueueError as err:
            raise SlurmUnavailable(str(err)) from None

    def cancel(self, job_id: str, submission_id: str) -> None:
        """scancel the job, only if Slurm lists it carrying this submission (its comment) and
        it has not ended: a cancel never reaches a job the intake did not submit for that
        submission. SlurmRefused: Slurm said no, the job has ended, or it is not that
        submission's;
        SlurmUnavailable: the outcome is unknown, try again."""
        if not job_id.isdigit():
            raise SlurmRefused(f"{job_id!r} is not a Slurm job id")
        listed = self.listed()
        carrier = _carriers(listed).get(submission_id)
        if carrier != job_id:
            raise SlurmRefused(
                f"Slurm job {job_id} does not carry submission {submission_id}"
                + (f" (job {carrier} does)" if carrier else " (Slurm lists none that does)")
            )
        job = next(job for job in listed if job.job_id == job_id)
        # scancel of a job that has ended says nothing and exits 0 (Slurm 24.11): without this,
        # a finished job would be recorded as cancelled.
        if job.ended:
            raise SlurmRefused(f"Slurm job {job_id} has already ended ({job.state})")
        argv = [*self.scancel, job_id]
        code, out, err = self._run(argv, stdin=None, timeout=SCANCEL_TIMEOUT_SECONDS)
        text = _one_line(err or out)
        lowered = text.lower()
        if code != 0 or "error" in lowered:
            if code != 0 and (not text or any(m in lowered for m in TRANSIENT_MARKERS)):
                raise SlurmUnavailable(f"scancel exited {code}: {text or 'no message'}")
            raise SlurmRefused(text or f"scancel exited {code}")


def job_variables(submission_id: str, job_env: Mapping[str, str]) -> dict[str, str]:
    """What the job must find in its environment: the submission id and ``job_env``. They go in
    sbatch's own environment, which sbatch exports into the job's: an ``--export=ALL,X=...``
    list makes slurmd load the user's login environment, which needs a mount namespace (clone
    with CLONE_NEWNS) that a container without CAP_SYS_ADMIN is refused - slurmd dies."""
    return {k: v for k, v in {SUBMISSION_ID_ENV: submission_id, **job_env}.items() if v}


def _carriers(jobs: list[SlurmJob]) -> dict[str, str]:
    """Submission id -> the Slurm job carrying it (its comment); the oldest where several do."""
    carriers: dict[str, str] = {}
    for job in jobs:
        submission_id = submission_of(job.comment)
        if submission_id is None:
            continue
        known = carriers.get(submission_id)
        if known is not None and known != job.job_id:
            log.warning(
                "submission %s is carried by Slurm jobs %s and %s; the first one counts",
                submission_id,
                known,
                job.job_id,
            )
        carriers[submission_id] = min(known or job.job_id, job.job_id, key=_job_order)
    return carriers


def _job_order(job_id: str) -> tuple[int, str]:
    head = job_id.split("_", 1)[0]
    return (int(head), job_id) if head.isdigit() else (1 << 62, job_id)
