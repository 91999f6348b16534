"""Which ended job attempts the lab hears about, and what it is told.

The job record writer knows each attempt's end state; a cancel is the lab's own doing and is not
mailed, nor is an export completing (``relion-spot pull`` waits for it at the lab's terminal).
A campaign's PostProcess completing is the campaign done (its job name says which). A
reclaimed attempt (its node lost: the spot watcher's requeue, NODE_FAIL, PREEMPTED) is requeued
by Slurm, and the job template resumes it from its last complete iteration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..cost.pricing import RECLAIM_STATES, Attempt
from .publish import Notification

DONE_STATES = frozenset({"COMPLETED"})
EXPORT_JOB_NAME = "export"
"""assets/slurm/export.sbatch's job name."""
FAILED_STATES = frozenset(
    {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
)


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def job_notification(attempt: Attempt) -> Notification | None:
    from ..jobs.campaign import LAST_STEP_JOB_PREFIX

    job = f"job {attempt.job_id} ({attempt.job_name or 'unnamed'}, {attempt.user or '?'})"
    ran = f"ran from {_when(attempt.start)} to {_when(attempt.end)} on {attempt.partition}"
    follow = f"relion-spot status {attempt.job_id}; relion-spot cost --by job"
    if attempt.state in DONE_STATES and attempt.job_name.startswith(LAST_STEP_JOB_PREFIX):
        campaign = attempt.job_name.removeprefix(LAST_STEP_JOB_PREFIX)
        return Notification(
            "campaign-done",
            f"campaign {campaign} done",
            f"The campaign's last step, its PostProcess ({job}), finished: {ran}. The sharpened "
            "map, its mask and the FSC are in the project's PostProcess job directory; "
            "relion-spot status shows the campaign's resolution and what all its steps cost.\n"
            f"{follow}",
        )
    if attempt.state in DONE_STATES and attempt.job_name == EXPORT_JOB_NAME:
        return None
    if attempt.state in DONE_STATES:
        return Notification("job-done", f"{job} done", f"{job} finished: {ran}.\n{follow}")
    if attempt.state in FAILED_STATES:
        return Notification(
            "job-failed",
            f"{job} {attempt.state.lower()}",
            f"{job} ended {attempt.state} (exit {attempt.exit_code or '?'}"
            f"{', ' + attempt.reason if attempt.reason else ''}): {ran}.\n"
            f"relion-spot logs {attempt.job_id}; {follow}",
        )
    if attempt.state in RECLAIM_STATES:
        why = attempt.state + (f", {attempt.reason}" if attempt.reason else "")
        return Notification(
            "job-reclaimed",
            f"{job} reclaimed, resuming",
            f"{job} lost its node ({why}): {ran}. Slurm requeued it; it resumes from its last "
            "complete iteration on a new node; the lost time counts in its cost as the "
            f"reclaimed share.\n{follow}",
        )
    return None
