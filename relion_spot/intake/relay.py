"""Copy the reports nodes make into their jobs' submissions: the controller's side.

    python -I -m relion_spot.intake.relay      (the controller entrypoint starts it)

A node puts each job's report into its own item, ``report:<instance ARN>:<submission id>``
(relion_spot.intake.report); IAM lets a node put no other key. Every few seconds this relay asks
Slurm which intake jobs run, or ran lately (``squeue --json``, which keeps an ended job for
MinJobAge: job id, comment, nodes) and which instance each node is (``scontrol --json show
nodes``: ``instance_id``, recorded by the resume program at launch). For each job it reads the
report item of the instance its batch node is, and when that item is the job's and has changed,
copies its progress and log tail into the submission's item, where the item's
``report_job_id`` (the drainer's) names the job. A node that writes a report for a job it does
not run writes an item nothing reads.

Environment: RELION_SPOT_INTAKE_TABLE, RELION_SPOT_INSTANCE_ARN_PREFIX, the region
(AWS_REGION / AWS_DEFAULT_REGION), RELION_SPOT_REPORT_POLL_SECONDS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..slurm import node_states, squeue
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
from .slurm import submission_of

POLL_SECONDS_ENV = "RELION_SPOT_REPORT_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 5.0
SLURM_TIMEOUT_SECONDS = 20

log = logging.getLogger("relion_spot.intake.relay")


@dataclass(frozen=True)
class ReportedJob:
    """An intake job and the instance whose report item speaks for it."""

    job_id: str
    submission_id: str
    instance_arn: str

    @property
    def report_key(self) -> str:
        return report_key(self.instance_arn, self.submission_id)


def reported_jobs(
    jobs: list[SlurmJob], instances: Mapping[str, str], arn_prefix: str
) -> list[ReportedJob]:
    """The intake jobs that have a node, each with its batch node's instance (the first of its
    nodes: Slurm starts the batch script there, and the report file is written there). A node
    Slurm knows no instance of reports for nothing."""
    found = []
    for job in jobs:
        submission_id = submission_of(job.comment)
        if submission_id is None or not job.nodes:
            continue
        instance_id = instances.get(job.nodes[0], "")
        if not instance_id:
            continue
        found.append(ReportedJob(job.job_id, submission_id, arn_prefix + instance_id))
    return found


def relay_update(table: str, job: ReportedJob, item: Mapping[str, Any]) -> dict[str, Any]:
    """The UpdateItem that copies a report item into the submission's item, only where that
    item exists and its ``report_job_id`` names the job."""
    return {
        "TableName": table,
        "Key": {KEY: {"S": job.submission_id}},
        "UpdateExpression": "SET #p = :p, #t = :t",
        "ConditionExpression": "attribute_exists(#k) AND #j = :j",
        "ExpressionAttributeNames": {"#p": PROGRESS, "#t": LOG_TAIL, "#k": KEY, "#j": REPORT_JOB},
        "ExpressionAttributeValues": {
            ":p": item[PROGRESS],
            ":t": item[LOG_TAIL],
            ":j": {"S": job.job_id},
        },
        "ReturnValues": REPORT_RETURN_VALUES,
    }


def _usable(item: Mapping[str, Any] | None, job: ReportedJob) -> bool:
    """A report item of this job, of the shape the node's forwarder writes."""
    return (
        item is not None
        and item.get(REPORT_JOB) == {"S": job.job_id}
        and "M" in (item.get(PROGRESS) or {})
        and "S" in (item.get(LOG_TAIL) or {})
    )


def _digest(item: Mapping[str, Any]) -> str:
    body = json.dumps([item[PROGRESS], item[LOG_TAIL]], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class Relay:
    """One controller's relay: ``round`` once, or ``run`` until stopped."""

    table: str
    client: Any
    jobs: Callable[[], list[ReportedJob] | None]
    _copied: dict[str, str] = field(default_factory=dict, repr=False)
    """Report key -> the digest of the report last copied from it."""

    def round(self) -> int:
        """Copy every changed report; the number copied."""
        from botocore.exceptions import BotoCoreError, ClientError

        listed = self.jobs()
        if listed is None:
            return 0
        copied = 0
        for job in listed:
            try:
                copied += self._copy(job)
            except (BotoCoreError, ClientError) as err:
                log.warning("job %s: report not relayed, retrying: %s", job.job_id, err)
        keys = {job.report_key for job in listed}
        for gone in set(self._copied) - keys:
            del self._copied[gone]
        return copied

    def _copy(self, job: ReportedJob) -> int:
        from botocore.exceptions import ClientError

        found = self.client.get_item(TableName=self.table, Key={KEY: {"S": job.report_key}})
        item = found.get("Item")
        if not _usable(item, job):
            return 0
        assert item is not None
        digest = _digest(item)
        if self._copied.get(job.report_key) == digest:
            return 0
        try:
            self.client.update_item(**relay_update(self.table, job, item))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            log.warning(
                "job %s: report not relayed: submission %s holds another job, or none",
                job.job_id,
                job.submission_id,
            )
        self._copied[job.report_key] = digest
        return 1

    def run(self, poll_seconds: float) -> None:
        while True:
            self.round()
            time.sleep(poll_seconds)


def _slurm(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=SLURM_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("%s did not answer: %s", argv[0], err)
        return None
    if done.returncode != 0:
        log.warning("%s exited %d: %s", argv[0], done.returncode, done.stderr.strip()[:300])
        return None
    return done.stdout


def slurm_reported_jobs(arn_prefix: str) -> list[ReportedJob] | None:
    """The intake's jobs and their batch nodes' instances, from Slurm; None when it did not
    answer."""
    jobs_text = _slurm(squeue.command())
    nodes_text = _slurm(node_states.command()) if jobs_text is not None else None
    if jobs_text is None or nodes_text is None:
        return None
    try:
        jobs = squeue.parse(jobs_text)
        nodes = node_states.parse(nodes_text)
    except (squeue.SqueueError, node_states.NodeStatesError) as err:
        log.warning("Slurm answered what this relay does not read: %s", err)
        return None
    instances = {node.name: node.instance_id for node in nodes if node.instance_id}
    return reported_jobs(jobs, instances, arn_prefix)


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
    raw_poll = env.get(POLL_SECONDS_ENV, "").strip() or str(DEFAULT_POLL_SECONDS)
    try:
        poll = float(raw_poll)
    except ValueError:
        poll = 0
    if not 0.1 <= poll <= 300:
        log.error("%s = %r: give seconds from 0.1 to 300", POLL_SECONDS_ENV, raw_poll)
        return 2
    import boto3
    from botocore.config import Config

    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    client = boto3.client(
        "dynamodb",
        region_name=region or None,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )
    log.info("relaying the nodes' reports in %s", table)
    Relay(table=table, client=client, jobs=lambda: slurm_reported_jobs(prefix)).run(poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
