"""Copy the reports nodes make into their jobs' submissions: the controller's side.

    python -I -m relion_spot.intake.relay      (the controller entrypoint starts it)

A node puts each job's report into its own item, ``report:<instance ARN>:<submission id>``
(relion_spot.intake.report); IAM lets a node put no other key. Every few seconds this relay asks
Slurm which intake jobs it lists (``squeue --json``: running ones, and ended ones for MinJobAge)
and, for each attempt of a job first seen running, which instance its batch node is: the one
running instance that carries the node's name in its ``relion-spot:node`` tag, which only the
resume program sets (a node may set no such tag, and Slurm's own record of a node's instance is
a Slurm admin's to change, which every node is). That instance is pinned to the attempt (job id
and restart count) for as long as Slurm lists it, so a node name given to a new instance after
the job ended never speaks for it. When the pinned instance's report item is the job's and has
changed, its progress and log tail are copied into the submission's item, where the item's
``report_job_id`` (the drainer's) names the job. A node that writes a report for a job it does
not run writes an item nothing reads.

Environment: RELION_SPOT_INTAKE_TABLE, RELION_SPOT_INSTANCE_ARN_PREFIX, RELION_SPOT_CLUSTER, the
region (AWS_REGION / AWS_DEFAULT_REGION), RELION_SPOT_REPORT_POLL_SECONDS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..powersave.config import CLUSTER_ENV
from ..slurm import squeue
from ..slurm.squeue import SlurmJob
from .config import (
    INSTANCE_ARN_PREFIX_ENV,
    KEY,
    LOG_TAIL,
    PROGRESS,
    REPORT_JOB,
    REPORT_RETURN_VALUES,
    TABLE_ENV,
    report_key,
)
from .message import canonical_id
from .report import poll_seconds
from .slurm import submission_of

SLURM_TIMEOUT_SECONDS = 20

log = logging.getLogger("relion_spot.intake.relay")

Attempt = tuple[str, int]
"""A job's attempt: its id and Slurm's restart count (a requeue starts the next attempt)."""


@dataclass(frozen=True)
class ListedJob:
    """An intake job as Slurm lists it."""

    job_id: str
    restarts: int
    submission_id: str
    batch_node: str
    """Where the batch script runs, and so where the job's report file is written."""
    running: bool

    @property
    def attempt(self) -> Attempt:
        return (self.job_id, self.restarts)


def listed_jobs(jobs: Iterable[SlurmJob]) -> list[ListedJob]:
    """The intake's jobs among Slurm's: a comment naming a submission in its one spelling."""
    found = []
    for job in jobs:
        submission_id = canonical_id(submission_of(job.comment))
        if submission_id is None:
            continue
        batch_node = job.batch_host or (job.nodes[0] if job.nodes else "")
        running = bool(batch_node) and job.state == "RUNNING"
        found.append(ListedJob(job.job_id, job.restarts, submission_id, batch_node, running))
    return found


def relay_update(
    table: str, job: ListedJob, progress: Mapping[str, Any], log_tail: Mapping[str, Any]
) -> dict[str, Any]:
    """The UpdateItem that copies a report into the submission's item, only where that item
    exists and its ``report_job_id`` names the job."""
    return {
        "TableName": table,
        "Key": {KEY: {"S": job.submission_id}},
        "UpdateExpression": "SET #p = :p, #t = :t",
        "ConditionExpression": "attribute_exists(#k) AND #j = :j",
        "ExpressionAttributeNames": {"#p": PROGRESS, "#t": LOG_TAIL, "#k": KEY, "#j": REPORT_JOB},
        "ExpressionAttributeValues": {":p": progress, ":t": log_tail, ":j": {"S": job.job_id}},
        "ReturnValues": REPORT_RETURN_VALUES,
    }


def _report_of(item: Mapping[str, Any] | None, job: ListedJob) -> tuple[Any, Any] | None:
    """The progress and log tail of a report item of this job, of the shape the node's
    forwarder writes; None for anything else."""
    if item is None or item.get(REPORT_JOB) != {"S": job.job_id}:
        return None
    progress, tail = item.get(PROGRESS), item.get(LOG_TAIL)
    if not isinstance(progress, dict) or set(progress) != {"M"}:
        return None
    if not isinstance(tail, dict) or set(tail) != {"S"}:
        return None
    return progress, tail


def _digest(progress: Any, tail: Any) -> str:
    return hashlib.sha256(json.dumps([progress, tail], sort_keys=True).encode()).hexdigest()


@dataclass
class Relay:
    """One controller's relay: ``round`` once, or ``run`` until stopped."""

    table: str
    client: Any
    """DynamoDB."""
    jobs: Callable[[], list[SlurmJob] | None]
    """Slurm's job list, or None when Slurm did not answer."""
    instances: Callable[[list[str]], dict[str, list[str]]]
    """Node names -> the ids of the running instances named so by their tag."""
    arn_prefix: str
    pins: dict[Attempt, str] = field(default_factory=dict)
    """A job's attempt -> the instance ARN its reports are read from."""
    _copied: dict[Attempt, str] = field(default_factory=dict, repr=False)
    """A job's attempt -> the digest of the report last copied for it."""

    def round(self) -> int:
        """Copy every changed report; the number copied."""
        from botocore.exceptions import BotoCoreError, ClientError

        slurm_jobs = self.jobs()
        if slurm_jobs is None:
            return 0
        listed = listed_jobs(slurm_jobs)
        try:
            self._pin([job for job in listed if job.running and job.attempt not in self.pins])
        except (BotoCoreError, ClientError) as err:
            log.warning("instances not looked up, retrying: %s", err)
        copied = 0
        for job in listed:
            if job.attempt not in self.pins:
                continue
            try:
                copied += self._copy(job, self.pins[job.attempt])
            except (BotoCoreError, ClientError) as err:
                log.warning("job %s: report not relayed, retrying: %s", job.job_id, err)
        present = {job.attempt for job in listed}
        for kept in (self.pins, self._copied):
            for gone in set(kept) - present:
                del kept[gone]
        return copied

    def _pin(self, unpinned: list[ListedJob]) -> None:
        if not unpinned:
            return
        found = self.instances(sorted({job.batch_node for job in unpinned}))
        for job in unpinned:
            named = found.get(job.batch_node, [])
            if len(named) == 1:
                self.pins[job.attempt] = self.arn_prefix + named[0]
            elif len(named) > 1:  # an old instance still shutting down: wait for one
                log.info("job %s: node %s is %d instances", job.job_id, job.batch_node, len(named))

    def _copy(self, job: ListedJob, instance_arn: str) -> int:
        from botocore.exceptions import ClientError

        key = report_key(instance_arn, job.submission_id)
        found = self.client.get_item(TableName=self.table, Key={KEY: {"S": key}})
        report = _report_of(found.get("Item"), job)
        if report is None:
            return 0
        digest = _digest(*report)
        if self._copied.get(job.attempt) == digest:
            return 0
        self._copied[job.attempt] = digest
        try:
            self.client.update_item(**relay_update(self.table, job, *report))
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code == "ConditionalCheckFailedException":
                log.warning(
                    "job %s: report not relayed: submission %s holds another job, or none",
                    job.job_id,
                    job.submission_id,
                )
                return 0
            if code == "ValidationException":  # e.g. past the item size limit: not retried
                log.warning("job %s: report refused by DynamoDB: %s", job.job_id, err)
                return 0
            del self._copied[job.attempt]
            raise
        return 1

    def run(self, poll_seconds: float) -> None:
        while True:
            self.round()
            time.sleep(poll_seconds)


def slurm_jobs() -> list[SlurmJob] | None:
    """Every job slurmctld lists; None when squeue did not answer."""
    return squeue.listed(timeout=SLURM_TIMEOUT_SECONDS, log=log)


def tagged_instances(ec2: Any, cluster: str) -> Callable[[list[str]], dict[str, list[str]]]:
    """The running instances of ``cluster`` by the node name the resume program tagged."""
    from ..powersave.ec2 import node_instances

    def lookup(nodes: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for instance in node_instances(ec2, cluster, nodes):
            if instance.state == "running":
                found.setdefault(instance.node, []).append(instance.instance_id)
        return found

    return lookup


def main(environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="relion-spot report relay: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = os.environ if environ is None else environ
    table = env.get(TABLE_ENV, "").strip()
    prefix = env.get(INSTANCE_ARN_PREFIX_ENV, "").strip()
    if not table:
        log.info("no intake table (%s): nothing to relay", TABLE_ENV)
        return 0
    if not prefix.startswith("arn:") or not prefix.endswith(":instance/"):
        log.error(
            "%s = %r: give arn:<partition>:ec2:<region>:<account>:instance/",
            INSTANCE_ARN_PREFIX_ENV,
            prefix,
        )
        return 2
    cluster = env.get(CLUSTER_ENV, "").strip()
    if not cluster:
        log.error("%s is empty: cannot tell which instances are this cluster's", CLUSTER_ENV)
        return 2
    poll = poll_seconds(env)
    if poll is None:
        return 2
    import boto3
    from botocore.config import Config

    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    session = boto3.session.Session(region_name=region or None)
    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
    relay = Relay(
        table=table,
        client=session.client("dynamodb", config=config),
        jobs=slurm_jobs,
        instances=tagged_instances(session.client("ec2", config=config), cluster),
        arn_prefix=prefix,
    )
    log.info("relaying the reports of %s's nodes in %s", cluster, table)
    relay.run(poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
