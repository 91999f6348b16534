"""Spot-reclaim watcher: on EC2's two-minute notice, hand this node's jobs back to Slurm.

    python -m relion_spot.node.spot_watcher       (started by the node bootstrap, in the slurmd
                                                   container)

Polls IMDS ``spot/instance-action`` (IMDSv2) every few seconds; it answers 404 until EC2 decides to
take the instance back. On a notice, within the two minutes:
1. ``scontrol update nodename=<node> state=drain reason="spot reclaim"`` - nothing new lands here;
2. ``scontrol requeue <jobs>`` for the jobs running on the node (``squeue --nodelist``): they go
   back to the queue now, while their checkpoints are intact, instead of at SlurmdTimeout after
   the instance is gone; the RELION job resumes from its last complete iteration;
3. ``scontrol update nodename=<node> state=power_down_asap`` - once the requeued jobs have left,
   Slurm runs SuspendProgram (terminating the instance a little early) and the name can be
   launched again after SuspendTimeout, rather than waiting out SuspendTime as a DOWN node;
   then, once Slurm has finished requeueing them (it holds a requeued job until now + 121 s, a
   guard against a stale launch credential on the same node, which is draining), ``scontrol
   update jobid=<jobs> starttime=now`` so they go to a fresh node at once.
4. The event is recorded for the cost tracker: a JSON line appended to
   ``RELION_SPOT_SPOT_EVENTS_FILE`` and, if ``RELION_SPOT_SPOT_EVENTS_TABLE`` is set, an item in
   that DynamoDB table (partition key ``instance_id``; written once per instance).

Between polls it also watches for being orphaned (relion_spot.node.orphan): idle, with no
answer from slurmctld about this node for RELION_SPOT_NODE_ORPHAN_SECONDS, it terminates its own
instance.

Exit status: 0 after a notice was handled; 1 if Slurm could not be told; 2 on bad settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import tags
from ..powersave import logs
from ..powersave.config import SCONTROL_ENV, SQUEUE_ENV
from ..powersave.slurm import CommandRunner, Slurm, run_command
from . import no_follow, orphan
from .imds import DEFAULT_IMDS_URL, IMDS_URL_ENV, Imds, ImdsError

NODE_NAME_ENV = "RELION_SPOT_NODE_NAME"
CLUSTER_ENV = "RELION_SPOT_CLUSTER"
POLL_SECONDS_ENV = "RELION_SPOT_SPOT_POLL_SECONDS"
EVENTS_FILE_ENV = "RELION_SPOT_SPOT_EVENTS_FILE"
EVENTS_TABLE_ENV = "RELION_SPOT_SPOT_EVENTS_TABLE"
LOG_FILE_ENV = "RELION_SPOT_SPOT_WATCHER_LOG"
DEFAULT_LOG_FILE = "/var/log/slurm/relion-spot-spot-watcher.log"
DEFAULT_POLL_SECONDS = 5.0
"""AWS's advice for the notice: check every 5 s. The notice comes 2 min ahead."""
DEFAULT_EVENTS_FILE = "/var/log/slurm/relion-spot-spot-events.jsonl"
REASON = "spot reclaim"
ACTION_PATH = "spot/instance-action"
JOB_LIST_ATTEMPTS = 3
RELEASE_ATTEMPTS = 30
"""Seconds to wait for Slurm to finish a requeue before lifting its delay (well inside 120)."""

log = logging.getLogger("relion_spot.node.spot_watcher")
PROC = Path("/proc")
"""Where the orphan watch looks for job steps (slurmstepd processes)."""


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class WatcherSettings:
    imds_url: str
    node: str
    cluster: str
    poll_seconds: float
    events_file: str
    events_table: str
    scontrol: str
    squeue: str
    orphan_seconds: int = orphan.DEFAULT_ORPHAN_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatcherSettings:
        raw_poll = env.get(POLL_SECONDS_ENV, "").strip()
        try:
            poll = float(raw_poll) if raw_poll else DEFAULT_POLL_SECONDS
        except ValueError:
            poll = -1.0
        if not 0 < poll <= 30:
            raise SettingsError(
                f"{POLL_SECONDS_ENV} = {raw_poll!r}: expected seconds above 0 and at most 30 "
                "(the notice gives 120)"
            )
        url = env.get(IMDS_URL_ENV, "").strip() or DEFAULT_IMDS_URL
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"{IMDS_URL_ENV} = {url!r}: expected an http:// base URL")
        try:
            orphan_seconds = orphan.orphan_seconds(env)
        except orphan.OrphanSettingsError as err:
            raise SettingsError(str(err)) from None
        return cls(
            imds_url=url,
            node=env.get(NODE_NAME_ENV, "").strip(),
            cluster=env.get(CLUSTER_ENV, "").strip(),
            poll_seconds=poll,
            events_file=env.get(EVENTS_FILE_ENV, DEFAULT_EVENTS_FILE).strip(),
            events_table=env.get(EVENTS_TABLE_ENV, "").strip(),
            scontrol=env.get(SCONTROL_ENV, "").strip() or "scontrol",
            squeue=env.get(SQUEUE_ENV, "").strip() or "squeue",
            orphan_seconds=orphan_seconds,
        )


@dataclass
class Identity:
    """Who this instance is, from IMDS (and the environment where the bootstrap set it)."""

    node: str
    cluster: str
    instance_id: str
    instance_type: str
    availability_zone: str
    region: str


@dataclass
class ReclaimEvent:
    kind: str
    cluster: str
    node: str
    instance_id: str
    instance_type: str
    availability_zone: str
    action: str
    action_time: str
    """When EC2 will act, from the notice (ISO 8601, UTC)."""
    noticed_at: float
    handled_at: float
    job_ids: list[str] = field(default_factory=list)
    requeued: bool = False
    drained: bool = False


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    runner: CommandRunner = run_command,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    dynamodb: Any = None,
    ec2: Any = None,
    proc: Path = PROC,
) -> int:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="spot_watcher",
        description="Hand this node's jobs back to Slurm on a spot interruption notice.",
    )
    parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logs.setup("spot-watcher", env.get(LOG_FILE_ENV, DEFAULT_LOG_FILE).strip())
    try:
        settings = WatcherSettings.from_env(env)
    except SettingsError as err:
        log.error("not watching: %s", err)
        return 2
    imds = Imds(settings.imds_url)
    identity = wait_for_identity(imds, settings, env, sleep)
    slurm = Slurm(runner=runner, scontrol=settings.scontrol, squeue=settings.squeue)
    log.info(
        "watching %s (%s, %s) for a spot interruption notice every %g s",
        identity.node,
        identity.instance_id,
        identity.instance_type,
        settings.poll_seconds,
    )
    check = orphan_check(settings, identity, runner, clock, ec2, proc)
    notice = wait_for_notice(imds, settings.poll_seconds, sleep, tick=check)
    if notice is None:
        log.info("%s: stopped watching; its instance is terminating", identity.node)
        return 0
    event = handle_notice(notice, identity, slurm, clock)
    # The record first: the instance may be gone within the two minutes, and lifting the requeue
    # delay can take up to RELEASE_ATTEMPTS seconds; the cost of the reclaim must not be lost.
    record(event, settings, identity, dynamodb)
    if event.job_ids and event.requeued:
        release_requeue_delay(slurm, identity.node, event.job_ids, sleep)
    return 0 if event.drained and event.requeued else 1


def wait_for_identity(
    imds: Imds, settings: WatcherSettings, env: Mapping[str, str], sleep: Callable[[float], None]
) -> Identity:
    """Ask IMDS until it answers; the node name may come from the environment or the node tag."""
    while True:
        try:
            return _identity(imds, settings, env)
        except (ImdsError, SettingsError) as err:
            log.warning("instance identity not known yet (%s); asking again", err)
            sleep(settings.poll_seconds)


def _identity(imds: Imds, settings: WatcherSettings, env: Mapping[str, str]) -> Identity:
    node = settings.node or (imds.get(f"tags/instance/{tags.NODE}") or "").strip()
    if not node:
        raise SettingsError(f"no {NODE_NAME_ENV} and no {tags.NODE} tag on this instance")
    cluster = settings.cluster or (imds.get(f"tags/instance/{tags.CLUSTER}") or "").strip()
    zone = (imds.get("placement/availability-zone") or "").strip()
    region = (
        env.get("AWS_REGION", "")
        or env.get("AWS_DEFAULT_REGION", "")
        or (imds.get("placement/region") or "")
    ).strip()
    return Identity(
        node=node,
        cluster=cluster,
        instance_id=(imds.get("instance-id") or "").strip(),
        instance_type=(imds.get("instance-type") or "").strip(),
        availability_zone=zone,
        region=region,
    )


def orphan_check(
    settings: WatcherSettings,
    identity: Identity,
    runner: CommandRunner,
    clock: Callable[[], float],
    ec2: Any,
    proc: Path,
) -> orphan.OrphanCheck:
    """The orphan watch for this node: slurmctld asked at most every quarter of the limit (and
    at least every 30 s), job steps counted in ``proc``, its own instance terminated."""

    def terminate() -> bool:
        client = ec2
        if client is None:
            import boto3

            client = boto3.session.Session().client("ec2", region_name=identity.region or None)
        return orphan.terminate_self(client, identity.instance_id)

    return orphan.OrphanCheck(
        watch=orphan.OrphanWatch(settings.orphan_seconds),
        answers=lambda: orphan.controller_knows(runner, settings.scontrol, identity.node),
        busy=lambda: orphan.job_steps_here(proc) > 0,
        terminate=terminate,
        clock=clock,
        every_seconds=min(30.0, settings.orphan_seconds / 4),
    )


def wait_for_notice(
    imds: Imds,
    poll_seconds: float,
    sleep: Callable[[float], None],
    tick: Callable[[], bool] | None = None,
) -> dict[str, str] | None:
    """Block until IMDS has an instance-action; its JSON (``action``, ``time``). ``tick`` runs
    between polls (the orphan watch); None once it says the instance is being terminated."""
    failing_since: float | None = None
    while True:
        if tick is not None and tick():
            return None
        try:
            body = imds.get(ACTION_PATH)
        except ImdsError as err:
            if failing_since is None:
                log.warning("IMDS unavailable (%s); still polling", err)
                failing_since = time.monotonic()
            sleep(poll_seconds)
            continue
        if failing_since is not None:
            log.info("IMDS answers again")
            failing_since = None
        if body is not None:
            try:
                notice = json.loads(body)
            except ValueError:
                notice = {}
            if not isinstance(notice, dict):
                notice = {}
            return {
                "action": str(notice.get("action", "terminate")),
                "time": str(notice.get("time", "")),
            }
        sleep(poll_seconds)


def release_requeue_delay(
    slurm: Slurm, node: str, jobs: list[str], sleep: Callable[[float], None]
) -> bool:
    """Start the requeued jobs' begin time now, once Slurm has set it (when the job has left the
    node); True if it was lifted."""
    for _ in range(RELEASE_ATTEMPTS):
        held = slurm.held_for_begin_time(jobs)
        if held:
            if slurm.start_now(held):
                log.info("%s: job(s) %s may start at once elsewhere", node, ",".join(held))
                return True
            break
        sleep(1)
    log.warning("%s: job(s) %s keep Slurm's requeue delay", node, ",".join(jobs))
    return False


def handle_notice(
    notice: dict[str, str],
    identity: Identity,
    slurm: Slurm,
    clock: Callable[[], float],
) -> ReclaimEvent:
    """Drain the node, requeue its jobs and power it down; what was done, to be recorded."""
    noticed_at = clock()
    node = identity.node
    log.info(
        "spot interruption notice: %s at %s; draining %s",
        notice["action"],
        notice["time"] or "an unstated time",
        node,
    )
    drained = slurm.drain(node, REASON)
    jobs: list[str] | None = None
    for _ in range(JOB_LIST_ATTEMPTS):
        jobs = slurm.jobs_on(node)
        if jobs is not None:
            break
    if jobs is None:
        log.error("%s: could not list its jobs; Slurm will requeue them at SlurmdTimeout", node)
        requeued = False
    elif jobs:
        requeued = slurm.requeue(jobs)
        log.info(
            "%s: %s job(s) %s",
            node,
            "requeued" if requeued else "could NOT requeue",
            ",".join(jobs),
        )
    else:
        requeued = True
        log.info("%s: no running jobs to requeue", node)
    if slurm.power_down_asap(node, REASON):
        log.info("%s: powering down once its jobs have left", node)
    event = ReclaimEvent(
        kind="spot-interruption",
        cluster=identity.cluster,
        node=node,
        instance_id=identity.instance_id,
        instance_type=identity.instance_type,
        availability_zone=identity.availability_zone,
        action=notice["action"],
        action_time=notice["time"],
        noticed_at=noticed_at,
        handled_at=clock(),
        job_ids=jobs or [],
        requeued=requeued,
        drained=drained,
    )
    log.info("%s: handled %.1f s after the notice", node, event.handled_at - event.noticed_at)
    return event


def record(
    event: ReclaimEvent, settings: WatcherSettings, identity: Identity, dynamodb: Any = None
) -> None:
    """Append the event as a JSON line and, if a table is set, put it there once."""
    line = json.dumps({**asdict(event), "noticed_at_iso": _iso(event.noticed_at)}, sort_keys=True)
    if settings.events_file:
        # /data is the job user's to write: no link planted on the way is followed.
        try:
            no_follow.append_line(settings.events_file, line)
            log.info("event recorded in %s", settings.events_file)
        except OSError as err:
            log.error("event NOT recorded in %s: %s", settings.events_file, err.strerror or err)
    if settings.events_table:
        _put_event(event, settings.events_table, identity.region, dynamodb)


def _put_event(event: ReclaimEvent, table: str, region: str, dynamodb: Any) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from ..cost.store import serialize

    try:
        if dynamodb is None:
            import boto3

            dynamodb = boto3.session.Session().client("dynamodb", region_name=region or None)
        dynamodb.put_item(
            TableName=table,
            Item=serialize({**asdict(event), "noticed_at_iso": _iso(event.noticed_at)}),
            ConditionExpression="attribute_not_exists(instance_id)",
        )
        log.info("event recorded in table %s", table)
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ConditionalCheckFailedException":
            log.info("event already in table %s", table)
        else:
            log.error("event NOT recorded in table %s: %s", table, error.get("Message"))
    except BotoCoreError as err:
        log.error("event NOT recorded in table %s: %s", table, err)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
