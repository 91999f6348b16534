"""Slurm's job list as ``squeue --json`` gives it (Slurm 24.11): one reader for the intake, the
budget guard and the nodes' report forwarder.

Not squeue's ``--format`` text: a comment is the job owner's to change (``scontrol update
comment=``), and one holding the field separator shifts every field after it, so a job could
read as another state, reason or dependency. Not ``%T`` either: it names a flag in place of the
state (``COMPLETING`` for a job that has failed and is still cleaning up, or that is being
requeued). JSON gives each field apart, and ``job_state`` as the base state first, then its
flags.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from typing import Any

from ..cost.hostlist import HostlistError, expand

LIVE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED"})
"""Base states of a job that may still run (a requeued job is PENDING again); every other base
state (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...) is final."""
HOLDING_NODES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"})
"""A job with one of these in its state holds nodes that bill."""


class SqueueError(RuntimeError):
    """squeue's answer is not the job list this code reads; the message says what was wrong."""


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    states: frozenset[str]
    partition: str
    node_count: int
    nodes: tuple[str, ...]
    start_time: int
    state: str = ""
    """The base state (``job_state``'s first entry); ``states`` holds it and its flags."""
    user_id: int = -1
    comment: str = ""
    admin_comment: str = ""
    held: bool = False
    reason: str = ""
    dependency: str = ""
    node_list: str = ""
    """``nodes`` as Slurm writes them (``gpu-[1-2]``)."""
    restarts: int = 0
    batch_host: str = ""
    """The node the batch script runs on (a running job's first node)."""

    @property
    def active(self) -> bool:
        """It holds nodes that bill."""
        return bool(self.states & HOLDING_NODES)

    @property
    def pending(self) -> bool:
        return "PENDING" in self.states

    @property
    def shown_state(self) -> str:
        """The state as ``scontrol show job`` names it, for the flags this product meets: a job
        whose epilog still runs is COMPLETING (finished or requeued), one whose nodes still
        boot is CONFIGURING; otherwise its base state."""
        for flag in ("COMPLETING", "CONFIGURING"):
            if flag in self.states:
                return flag
        return self.state

    @property
    def ended(self) -> bool:
        """It will not run again, whatever it still cleans up."""
        return self.state not in LIVE_STATES


def command(*selection: str) -> list[str]:
    """squeue's call for every job in any state, or for a selection (``--nodelist=gpu-1``)."""
    return ["squeue", "--json", *(selection or ("--all", "--states=all"))]


def listed(*selection: str, timeout: float, log: logging.Logger) -> list[SlurmJob] | None:
    """The jobs squeue lists (``command``) on this host; None, logged as a warning on ``log``,
    when it did not answer or answered what is not its job list: the callers poll again."""
    try:
        done = subprocess.run(
            command(*selection),
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("squeue did not answer: %s", err)
        return None
    if done.returncode != 0:
        log.warning("squeue exited %d: %s", done.returncode, done.stderr.strip()[:300])
        return None
    try:
        return parse(done.stdout)
    except SqueueError as err:
        log.warning("squeue answered what is not its job list: %s", err)
        return None


def number(value: Any) -> int:
    """Slurm's JSON gives numbers bare or as {"set": bool, "infinite": bool, "number": n}."""
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set", True) else 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def parse(text: str) -> list[SlurmJob]:
    """The jobs in ``squeue --json`` output, oldest first."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SqueueError(f"squeue --json answered no JSON ({err.msg})") from None
    entries = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise SqueueError("squeue --json answered without a 'jobs' list")
    jobs = [_job(entry) for entry in entries]
    return sorted(jobs, key=lambda j: (len(j.job_id), j.job_id))


def _job(entry: Any) -> SlurmJob:
    if not isinstance(entry, dict) or "job_id" not in entry:
        raise SqueueError(f"squeue --json listed a job without an id: {entry!r:.200}")
    job_id = str(number(entry["job_id"]))
    state = entry.get("job_state") or []
    flags = [state] if isinstance(state, str) else state
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise SqueueError(f"squeue --json listed job {job_id} without a state: {state!r:.200}")
    nodes_text = str(entry.get("nodes") or "")
    try:
        nodes = tuple(expand(nodes_text)) if nodes_text else ()
    except HostlistError as err:
        raise SqueueError(f"job {job_id}: nodes {nodes_text!r}: {err}") from None
    return SlurmJob(
        job_id=job_id,
        states=frozenset(flags),
        partition=_text(entry, "partition"),
        node_count=max(1, number(entry.get("node_count"))),
        nodes=nodes,
        start_time=number(entry.get("start_time")),
        state=flags[0],
        user_id=number(entry["user_id"]) if "user_id" in entry else -1,
        comment=_text(entry, "comment"),
        admin_comment=_text(entry, "admin_comment"),
        held=bool(entry.get("hold")),
        reason=_text(entry, "state_reason"),
        dependency=_text(entry, "dependency"),
        node_list=nodes_text,
        restarts=number(entry.get("restart_cnt")),
        batch_host=_text(entry, "batch_host"),
    )


def _text(entry: dict[str, Any], name: str) -> str:
    value = entry.get(name)
    return value if isinstance(value, str) else ""
