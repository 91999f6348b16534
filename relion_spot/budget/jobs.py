"""What Slurm runs and holds, from ``squeue --json``, and the commands that hold and release.

A job held for the budget carries the admin comment ``relion-spot held: budget: ...`` (written by
``powersave.slurm.Slurm.hold``, the same mechanism as a hold for a launch no retry cures); that
prefix is how the release loop knows which holds are its own.
"""

from __future__ import annotations

from ..powersave.slurm import CommandRunner
from ..slurm.squeue import SlurmJob, SqueueError, parse

HOLD_REASON_PREFIX = "budget: "
BUDGET_COMMENT_PREFIX = f"relion-spot held: {HOLD_REASON_PREFIX}"


class SlurmAnswerError(RuntimeError):
    """squeue failed or answered something that is not its JSON."""


def held_for_budget(job: SlurmJob) -> bool:
    return job.pending and job.admin_comment.startswith(BUDGET_COMMENT_PREFIX)


def cluster_jobs(runner: CommandRunner, squeue: str = "squeue") -> list[SlurmJob]:
    result = runner([squeue, "--json"])
    if result.returncode != 0:
        raise SlurmAnswerError(
            f"squeue --json failed ({result.returncode}): {result.stderr.strip()[:200]}"
        )
    try:
        return parse(result.stdout)
    except SqueueError as err:
        raise SlurmAnswerError(str(err)) from None


def release(runner: CommandRunner, job_ids: list[str], scontrol: str = "scontrol") -> bool:
    """Release the jobs and clear the budget comment, so a later hold is told apart."""
    if not job_ids:
        return True
    ids = ",".join(job_ids)
    released = runner([scontrol, "release", ids]).returncode == 0
    cleared = runner([scontrol, "update", f"jobid={ids}", "admincomment="]).returncode == 0
    return released and cleared
