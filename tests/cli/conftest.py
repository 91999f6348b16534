"""A deployed cluster as the lab's commands see it, in moto: a CloudFormation stack with the
cluster's outputs, the intake queue and table, the job cost table, and a drainer (in this
process) over stand-ins for sbatch, squeue and scancel."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relion_spot import __version__, tags
from relion_spot.intake.config import REGION_ENV, TABLE_ENV
from relion_spot.intake.drain import Drainer
from relion_spot.intake.prepare import JobPreparer
from relion_spot.intake.relay import Relay, tagged_instances
from relion_spot.intake.report import JobReport, ReportPublisher
from relion_spot.intake.slurm import SlurmJobs
from relion_spot.intake.table import IntakeTable
from relion_spot.node.job_reports import Forwarder, NodeJob
from relion_spot.slurm.squeue import SlurmJob
from tests.intake.conftest import (
    MIN_JOB_AGE,
    QUEUE,
    TABLE,
    FakeSlurm,
    cluster_spec,
    fake_slurm,
    make_queue_and_table,
)

__all__ = ["fake_slurm"]

STACK = "lab-gpu1"
CLUSTER = "lab-gpu1"
COSTS = "lab-gpu1-costs"
RECORDS = "lab-gpu1-records"
REGION = "us-east-1"

SCANCEL = r"""#!/bin/bash
# Stand-in for Slurm's scancel: notes the call; ``scancel-refuse`` makes it refuse. Like Slurm
# 24.11's, it says nothing and exits 0 for a job that has ended.
dir=$(dirname "$0")
printf '%s\n' "$*" >> "$dir/scancel-calls"
if [ -e "$dir/scancel-refuse" ]; then
  echo "scancel: error: Kill job error on job id $1: $(cat "$dir/scancel-refuse")" >&2
  exit 1
fi
"""


def stack_template(outputs: dict[str, str]) -> str:
    return json.dumps(
        {
            "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()},
        }
    )


@dataclass
class Cluster:
    sqs: Any
    dynamodb: Any
    cloudformation: Any
    queue_url: str
    slurm: FakeSlurm

    @property
    def table(self) -> IntakeTable:
        return IntakeTable(self.dynamodb, TABLE)

    def drainer(self, admin_ids: frozenset[str] = frozenset()) -> Drainer:
        jobs = SlurmJobs(
            sbatch=(str(self.slurm.sbatch),),
            squeue=(str(self.slurm.squeue),),
            scancel=(str(self.slurm.dir / "scancel"),),
            job_env={TABLE_ENV: TABLE, REGION_ENV: REGION},
        )
        return Drainer(
            sqs=self.sqs,
            table=self.table,
            queue_url=self.queue_url,
            slurm=jobs,
            prepare=JobPreparer.from_spec(cluster_spec()),
            min_job_age=MIN_JOB_AGE,
            wait_seconds=0,
            admin_ids=admin_ids,
        )

    @property
    def dead_letter_queue_url(self) -> str:
        return str(self.sqs.get_queue_url(QueueName=f"{QUEUE}-dead")["QueueUrl"])

    def scancel_calls(self) -> list[str]:
        calls = self.slurm.dir / "scancel-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def add_stack(self, name: str, outputs: dict[str, str]) -> None:
        self.cloudformation.create_stack(StackName=name, TemplateBody=stack_template(outputs))


@pytest.fixture
def cluster(moto_aws: None, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    import warnings

    import boto3

    from relion_spot.cost.store import create_tables

    monkeypatch.delenv("RELION_SPOT_STACK", raising=False)
    scancel = fake_slurm.dir / "scancel"
    scancel.write_text(SCANCEL)
    scancel.chmod(0o755)
    sqs = boto3.client("sqs", region_name=REGION)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    url = make_queue_and_table(sqs, dynamodb)
    create_tables(dynamodb, records_table=RECORDS, costs_table=COSTS)
    made = Cluster(sqs, dynamodb, cloudformation, url, fake_slurm)
    with warnings.catch_warnings():  # moto does not model the placeholder resource
        warnings.simplefilter("ignore", UserWarning)
        made.add_stack(
            STACK,
            {
                "ClusterName": CLUSTER,
                "Version": __version__,
                "IntakeQueueUrl": url,
                "IntakeTable": TABLE,
                "JobCostsTable": COSTS,
                "JobRecordsTable": RECORDS,
                "IntakeDeadLetterQueueUrl": made.dead_letter_queue_url,
            },
        )
        made.add_stack("unrelated", {"Something": "else"})
    return made


def job_log(tmp_path: Path, job_id: str, lines: int) -> Path:
    path = tmp_path / f"class3d-{job_id}.out"
    path.write_text("".join(f"line {n}\n" for n in range(lines)))
    return path


NODE = "gpu-1"
"""The node the jobs of these tests run on: one instance in moto, tagged as the resume program
tags it."""
ARN_PREFIX = "arn:aws:ec2:us-east-1:123456789012:instance/"


def node_instance_arn() -> str:
    """The ARN of the instance that is ``NODE`` (launched on first use)."""
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    running = tagged_instances(ec2, CLUSTER)([NODE]).get(NODE)
    if running:
        return ARN_PREFIX + running[0]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (instance,) = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    named = [{"Key": tags.CLUSTER, "Value": CLUSTER}, {"Key": tags.NODE, "Value": NODE}]
    ec2.create_tags(Resources=[instance["InstanceId"]], Tags=named)
    return ARN_PREFIX + str(instance["InstanceId"])


def _relay(job: str, sid: str) -> Relay:
    """The controller's relay, Slurm listing ``job`` running on ``NODE`` for ``sid``."""
    import boto3

    listed = SlurmJob(
        job_id=job,
        states=frozenset({"RUNNING"}),
        partition="gpu",
        node_count=1,
        nodes=(NODE,),
        start_time=1,
        state="RUNNING",
        comment=f"relion-spot:{sid}",
        batch_host=NODE,
    )
    return Relay(
        table=TABLE,
        client=boto3.client("dynamodb", region_name=REGION),
        jobs=lambda: [listed],
        instances=tagged_instances(boto3.client("ec2", region_name=REGION), CLUSTER),
        arn_prefix=ARN_PREFIX,
    )


@dataclass
class NodeReports:
    """How a job's report reaches its submission's item: the node's forwarder puts it into
    the node's own report item, the controller's relay copies it across."""

    forwarder: Forwarder
    relay: Relay

    @property
    def publisher(self) -> ReportPublisher:
        return self.forwarder.publisher

    def round(self) -> None:
        self.forwarder.round()
        self.relay.round()

    def flush(self) -> None:
        self.forwarder.flush()
        self.relay.round()


def node_reports(spool: Path, job: str, sid: str, *, cluster: str = CLUSTER) -> NodeReports:
    """The node's forwarder (root's, in the cloud) for one intake job of this process's user,
    and the controller's relay."""
    publisher = ReportPublisher(
        table=TABLE, instance_arn=node_instance_arn(), region=REGION, cluster=cluster
    )
    forwarder = Forwarder(
        spool=spool,
        publisher=publisher,
        jobs=lambda: [NodeJob(job_id=job, user_id=os.getuid(), submission_id=sid)],
    )
    return NodeReports(forwarder, _relay(job, sid))


def relay_report(job: str, sid: str, report: JobReport) -> None:
    """One report from the node into the node's item, relayed into the submission's."""
    ReportPublisher(table=TABLE, instance_arn=node_instance_arn(), region=REGION).publish(
        sid, job, report
    )
    _relay(job, sid).round()
