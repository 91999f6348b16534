"""An idle node whose controller is gone terminates itself, so nothing bills unseen.

Slurm's SuspendProgram terminates idle nodes, but only a running slurmctld runs it. When the
controller cannot be reached (its Fargate task reclaimed with no capacity to come back, a broken
deploy, a stack half deleted), a node with no job would run, and bill, until someone notices. The
spot watcher (root, beside slurmd) checks here: once this node has had no job step on it
(no ``slurmstepd``) and no answer from slurmctld about it (``scontrol show node``) for
``RELION_SPOT_NODE_ORPHAN_SECONDS`` without a break, it terminates its own instance.
A node still running a job is never ended: its job may yet finish and its results are on EFS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..powersave.slurm import CommandRunner

ORPHAN_SECONDS_ENV = "RELION_SPOT_NODE_ORPHAN_SECONDS"
DEFAULT_ORPHAN_SECONDS = 900
"""Well past a controller's restart or wake (a cold Fargate start is a minute or two)."""
MIN_ORPHAN_SECONDS = 10
STEP_DAEMON = "slurmstepd"

log = logging.getLogger("relion_spot.node.orphan")


class OrphanSettingsError(ValueError):
    pass


def orphan_seconds(env: Mapping[str, str]) -> int:
    raw = env.get(ORPHAN_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_ORPHAN_SECONDS
    if not raw.isdigit() or int(raw) < MIN_ORPHAN_SECONDS:
        raise OrphanSettingsError(
            f"{ORPHAN_SECONDS_ENV} = {raw!r}: expected whole seconds, at least {MIN_ORPHAN_SECONDS}"
        )
    return int(raw)


def controller_knows(runner: CommandRunner, scontrol: str, node: str) -> bool:
    """Whether slurmctld answers about this node (a controller that is down, unreachable or
    has never heard of the node does not)."""
    return runner([scontrol, "show", "node", node]).returncode == 0


def job_steps_here(proc: Path = Path("/proc")) -> int:
    """Job step daemons on this node: every job Slurm runs here has at least one."""
    count = 0
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == STEP_DAEMON:
                count += 1
        except OSError:  # the process ended between the listing and the read
            continue
    return count


@dataclass
class OrphanWatch:
    """Counts uninterrupted orphaned time; ``due`` once it reaches ``limit_seconds``."""

    limit_seconds: float
    since: float | None = None

    def observe(self, *, controller_answers: bool, busy: bool, now: float) -> bool:
        if controller_answers or busy:
            if self.since is not None:
                why = "slurmctld answers" if controller_answers else "a job runs"
                log.info("no longer orphaned: %s", why)
            self.since = None
            return False
        if self.since is None:
            log.warning(
                "idle and slurmctld does not answer about this node; terminating in %g s unless "
                "that changes",
                self.limit_seconds,
            )
            self.since = now
        return now - self.since >= self.limit_seconds


def terminate_self(ec2: Any, instance_id: str) -> bool:
    """TerminateInstances on this instance; True if EC2 accepted it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ec2.terminate_instances(InstanceIds=[instance_id])
    except (ClientError, BotoCoreError) as err:
        log.error("could not terminate %s: %s; will try again", instance_id, err)
        return False
    log.warning("terminated %s: idle, and no controller answered for this node", instance_id)
    return True


@dataclass
class OrphanCheck:
    """One check of the watch, run by the spot watcher between its IMDS polls."""

    watch: OrphanWatch
    answers: Callable[[], bool]
    busy: Callable[[], bool]
    terminate: Callable[[], bool]
    clock: Callable[[], float]
    every_seconds: float
    _last: float | None = None
    terminated: bool = False

    def __call__(self) -> bool:
        """Check if one is due; True once the instance has been terminated."""
        now = self.clock()
        if self._last is None:
            self._last = now  # the first check one interval after start
        if self.terminated or now - self._last < self.every_seconds:
            return self.terminated
        self._last = now
        busy = self.busy()
        answers = True if busy else self.answers()
        if self.watch.observe(controller_answers=answers, busy=busy, now=now):
            self.terminated = self.terminate()
        return self.terminated
