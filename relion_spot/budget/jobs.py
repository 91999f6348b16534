"""What Slurm runs and holds, from ``squeue --json``, and the commands that hold and release.

A job held for the budget carries the admin comment ``relion-spot held: budget: ...`` (written by
``powersave.slurm.Slurm.hold``, the same mechanism as a hold for a launch no retry cures); that
prefix is how the release loop knows which holds are its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..cost.hostlist import HostlistError, expand
from ..powersave.slurm import CommandRunner

HOLD_REASON_PREFIX = "budget: "
BUDGET_COMMENT_PREFIX = f"relion-spot held: {HOLD_REASON_PREFIX}"
ACTIVE_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"})
"""States in which a job holds nodes that bill."""


class SlurmAnswerError(RuntimeError):
    """squeue failed or answered something that is not its JSON."""


@dataclass(frozen=True)
class ClusterJob:
    job_id: str
    states: frozenset[str]
    partition: str
    node_count: int
    nodes: tuple[str, ...]
    start_time: int
    admin_comment: str = ""
    held: bool = False

    @property
    def active(self) -> bool:
        return bool(self.states & ACTIVE_STATES)

    @property
    def pending(self) -> bool:
        return "PENDING" in self.states

    @property
    def held_for_budget(self) -> bool:
        return self.pending and self.admin_comment.startswith(BUDGET_COMMENT_PREFIX)


def _number(value: Any) -> int:
    """Slurm's JSON gives numbers bare or as {"set": bool, "infinite": bool, "number": n}."""
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set", True) else 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def parse_squeue(text: str) -> list[ClusterJob]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SlurmAnswerError(f"squeue --json answered no JSON ({err.msg})") from None
    entries = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise SlurmAnswerError("squeue --json answered without a 'jobs' list")
    jobs = []
    for entry in entries:
        if not isinstance(entry, dict) or "job_id" not in entry:
            raise SlurmAnswerError(f"squeue --json listed a job without an id: {entry!r:.200}")
        state = entry.get("job_state") or []
        states = frozenset([state] if isinstance(state, str) else [str(s) for s in state])
        nodes_text = str(entry.get("nodes") or "")
        try:
            nodes = tuple(expand(nodes_text)) if nodes_text else ()
        except HostlistError as err:
            raise SlurmAnswerError(f"job {entry['job_id']}: nodes {nodes_text!r}: {err}") from None
        jobs.append(
            ClusterJob(
                job_id=str(_number(entry["job_id"])),
                states=states,
                partition=str(entry.get("partition") or ""),
                node_count=max(1, _number(entry.get("node_count"))),
                nodes=nodes,
                start_time=_number(entry.get("start_time")),
                admin_comment=str(entry.get("admin_comment") or ""),
                held=bool(entry.get("hold")),
            )
        )
    return sorted(jobs, key=lambda j: (len(j.job_id), j.job_id))


def cluster_jobs(runner: CommandRunner, squeue: str = "squeue") -> list[ClusterJob]:
    result = runner([squeue, "--json"])
    if result.returncode != 0:
        raise SlurmAnswerError(
            f"squeue --json failed ({result.returncode}): {result.stderr.strip()[:200]}"
        )
    return parse_squeue(result.stdout)


def release(runner: CommandRunner, job_ids: list[str], scontrol: str = "scontrol") -> bool:
    """Release the jobs and clear the budget comment, so a later hold is told apart."""
    if not job_ids:
        return True
    ids = ",".join(job_ids)
    released = runner([scontrol, "release", ids]).returncode == 0
    cleared = runner([scontrol, "update", f"jobid={ids}", "admincomment="]).returncode == 0
    return released and cleared
