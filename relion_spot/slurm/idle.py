"""The controller puts itself to sleep: with nothing to do for a while, its ECS service goes to 0.

    python -m relion_spot.slurm.idle        (started by the entrypoint beside slurmctld)

Every check asks: is any job known to Slurm (pending, running, completing)? Is any node not
powered down? Is any submission waiting in the intake queue or being handled? Anything that cannot
be answered counts as busy: the controller never sleeps on a doubt. After
RELION_SPOT_CONTROLLER_IDLE_SECONDS of uninterrupted idleness it sets the desired count of its own
service (RELION_SPOT_ECS_CLUSTER / RELION_SPOT_ECS_SERVICE) to 0; ECS stops the task with SIGTERM,
slurmctld saves its state to EFS, and the bill drops to what the cluster costs asleep. A submission
wakes it (``relion_spot.controller_wake``: ``relion-spot submit`` at once, a scheduled check for
any other sender): the service goes back to 1 and slurmctld resumes from the saved state.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..controller_capacity.fallback import ON_DEMAND, SPOT, sleep_arguments
from ..controller_wake.wake import waiting_submissions
from ..powersave import logs
from ..powersave.slurm import CommandRunner, run_command
from . import node_states

log = logging.getLogger("relion_spot.slurm.idle")

CLUSTER_ENV = "RELION_SPOT_ECS_CLUSTER"
SERVICE_ENV = "RELION_SPOT_ECS_SERVICE"
IDLE_SECONDS_ENV = "RELION_SPOT_CONTROLLER_IDLE_SECONDS"
QUEUE_URL_ENV = "RELION_SPOT_INTAKE_QUEUE_URL"
CAPACITY_PROVIDER_ENV = "RELION_SPOT_CONTROLLER_CAPACITY_PROVIDER"
"""The Fargate capacity provider the deployment chose; the service goes back to it when it sleeps
(relion_spot.controller_capacity: a Spot shortage may have moved it to on-demand)."""
MIN_IDLE_SECONDS = 10
MAX_CHECK_SECONDS = 30.0


class IdleSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class IdleSettings:
    ecs_cluster: str
    ecs_service: str
    idle_seconds: int
    queue_url: str
    capacity_provider: str = ""
    """The provider to sleep back onto; empty: leave the service's strategy as it is."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IdleSettings:
        cluster, service = env.get(CLUSTER_ENV, "").strip(), env.get(SERVICE_ENV, "").strip()
        if not cluster or not service:
            raise IdleSettingsError(
                f"{CLUSTER_ENV} and {SERVICE_ENV} must name the controller's ECS cluster and "
                f"service (got {cluster!r}, {service!r})"
            )
        raw = env.get(IDLE_SECONDS_ENV, "").strip()
        if not raw.isdigit() or int(raw) < MIN_IDLE_SECONDS:
            raise IdleSettingsError(
                f"{IDLE_SECONDS_ENV} = {raw!r}: expected whole seconds, at least {MIN_IDLE_SECONDS}"
            )
        provider = env.get(CAPACITY_PROVIDER_ENV, "").strip()
        if provider not in ("", SPOT, ON_DEMAND):
            raise IdleSettingsError(
                f"{CAPACITY_PROVIDER_ENV} = {provider!r}: expected {SPOT} or {ON_DEMAND}"
            )
        return cls(cluster, service, int(raw), env.get(QUEUE_URL_ENV, "").strip(), provider)

    @property
    def check_seconds(self) -> float:
        return min(MAX_CHECK_SECONDS, self.idle_seconds / 4)


def busy_reason(runner: CommandRunner, sqs: Any, queue_url: str) -> str | None:
    """Why the controller must stay up, or None when it has nothing to do."""
    jobs = runner(["squeue", "--noheader", "--format=%i"])
    if jobs.returncode != 0:
        return "Slurm does not answer squeue"
    if jobs.stdout.strip():
        return f"{len(jobs.stdout.split())} job(s) in Slurm"
    nodes = runner(node_states.command())
    if nodes.returncode != 0:
        return "Slurm does not answer scontrol"
    try:
        states = node_states.parse(nodes.stdout)
    except node_states.NodeStatesError as err:
        return f"Slurm's node list cannot be read ({err})"
    for node in states:
        if node_states.POWERED_DOWN not in node.flags:
            return f"node {node.name} is {node.text}"
    if queue_url:
        try:
            waiting = waiting_submissions(sqs, queue_url)
        except Exception as err:  # AWS unreachable: a doubt, so stay up
            return f"the intake queue cannot be read ({type(err).__name__})"
        if waiting:
            return f"{waiting} submission(s) in the intake queue"
    return None


def watch(
    settings: IdleSettings,
    *,
    ecs: Any,
    sqs: Any,
    runner: CommandRunner = run_command,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> bool:
    """Check until idle for long enough, then scale the service to 0; True once it did.
    ``rounds`` bounds the checks (tests)."""
    idle_since: float | None = None
    previous: str | None = "starting"
    count = 0
    while rounds is None or count < rounds:
        count += 1
        reason = busy_reason(runner, sqs, settings.queue_url)
        now = clock()
        if reason != previous:
            if reason:
                log.info("busy: %s", reason)
            else:
                log.info("idle: no jobs, no nodes up, no submissions")
            previous = reason
        if reason:
            idle_since = None
        else:
            idle_since = now if idle_since is None else idle_since
            if now - idle_since >= settings.idle_seconds:
                ecs.update_service(
                    cluster=settings.ecs_cluster,
                    service=settings.ecs_service,
                    desiredCount=0,
                    **sleep_arguments(settings.capacity_provider),
                )
                log.info(
                    "idle for %.0f s: service %s scaled to 0 (state stays on EFS; a submission "
                    "wakes it)",
                    now - idle_since,
                    settings.ecs_service,
                )
                return True
        sleep(settings.check_seconds)
    return False


def main() -> int:
    logs.setup("idle")
    try:
        settings = IdleSettings.from_env(os.environ)
    except IdleSettingsError as err:
        print(f"relion-spot idle: {err}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.session.Session()
    watch(settings, ecs=session.client("ecs"), sqs=session.client("sqs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
