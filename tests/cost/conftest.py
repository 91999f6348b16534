"""Fixtures for the cost tests: an in-process moto account with the two cost tables and a
helper that launches tagged instances the way a node group does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot import tags
from relion_spot.cost import config, jobcomp
from relion_spot.cost.config import CostConfig
from relion_spot.cost.handler import Clients, CostService
from relion_spot.cost.store import JOB_KEY, create_tables, decode_cost, deserialize, job_key

REGION = "us-east-1"
CLUSTER = "gpu1"
RECORDS = "test-attempts"
COSTS = "test-costs"
AMI = "ami-12c6146b"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    with mock_aws():
        yield


@dataclass
class Account:
    ec2: Any
    dynamodb: Any
    clients: Clients
    environ: dict[str, str]

    def launch(
        self,
        *,
        node: str,
        instance_type: str = "g5.xlarge",
        zone: str = "us-east-1a",
        cluster: str | None = CLUSTER,
        extra_tags: dict[str, str] | None = None,
        launch_template_id: str | None = None,
    ) -> str:
        values = {tags.NODE: node, tags.INSTANCE_TYPE: instance_type, tags.PARTITION: "gpu"}
        if cluster is not None:
            values[tags.CLUSTER] = cluster
        values.update(extra_tags or {})
        request: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": instance_type,
            "Placement": {"AvailabilityZone": zone},
        }
        if launch_template_id:
            request["LaunchTemplate"] = {"LaunchTemplateId": launch_template_id}
        else:
            request["ImageId"] = AMI
            request["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in values.items()],
                }
            ]
        return self.ec2.run_instances(**request)["Instances"][0]["InstanceId"]

    def service(self) -> CostService:
        return CostService(config.CostConfig.from_env(self.environ), self.clients)


@pytest.fixture
def account(aws: None) -> Account:
    session = boto3.session.Session(region_name=REGION)
    clients = Clients(
        ec2=session.client("ec2"),
        dynamodb=session.client("dynamodb"),
        cloudwatch=session.client("cloudwatch"),
        ce=session.client("ce", region_name="us-east-1"),
    )
    create_tables(clients.dynamodb, records_table=RECORDS, costs_table=COSTS)
    environ = {
        config.CLUSTER: CLUSTER,
        config.RECORDS_TABLE: RECORDS,
        config.COSTS_TABLE: COSTS,
        "AWS_DEFAULT_REGION": os.environ["AWS_DEFAULT_REGION"],
    }
    return Account(clients.ec2, clients.dynamodb, clients, environ)


HOURS_PER_MONTH = 730
EBS_RATES = {"gp2": 0.10, "gp3": 0.08}


def launch_time(account: Account, instance_id: str) -> int:
    reservation = account.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    return int(reservation["Instances"][0]["LaunchTime"].timestamp())


def slurm_env(job_id: str, *, nodes: str, start: int, end: int, state: str, procs: int) -> dict:
    """What jobcomp/script puts in the writer's environment for one attempt."""
    return {
        "JOBID": job_id,
        "UID": "1000",
        "USERNAME": "alice",
        "JOBNAME": "class3d",
        "PARTITION": "gpu",
        "NODES": nodes,
        "NODECNT": "1",
        "PROCS": str(procs),
        "START": str(start),
        "END": str(end),
        "JOBSTATE": state,
        "EXITCODE": "0:0",
    }


def write_attempt(account: Account, env: dict) -> str:
    config = CostConfig.from_env(account.environ, need_costs=False)
    return jobcomp.record(env, config, (account.ec2, account.dynamodb))


def cost_item(account: Account, job_id: str) -> dict:
    response = account.dynamodb.get_item(
        TableName=COSTS, Key={JOB_KEY: {"S": job_key(CLUSTER, job_id)}}, ConsistentRead=True
    )
    return decode_cost(deserialize(response["Item"]))


def expected_node_cost(
    account: Account, instance_id: str, *, start: int, end: int, share: float
) -> float:
    """Hand arithmetic from what moto returns: the spot price in force at the attempt's start
    (moto returns one placeholder point per type and AZ, dated 2006) times the hours, plus the
    instance's volumes prorated over a 730-hour month, all times the job's share of the node."""
    instance = account.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]
    history = account.ec2.describe_spot_price_history(
        InstanceTypes=[instance["InstanceType"]],
        Filters=[
            {"Name": "availability-zone", "Values": [instance["Placement"]["AvailabilityZone"]]}
        ],
    )["SpotPriceHistory"]
    assert len(history) == 1 and history[0]["Timestamp"].timestamp() < start
    price = float(history[0]["SpotPrice"])
    volume_ids = [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]]
    volumes = account.ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert volumes, "moto gives every instance a root volume"
    hours = (end - start) / 3600
    ebs = sum(v["Size"] * EBS_RATES[v["VolumeType"]] for v in volumes) * hours / HOURS_PER_MONTH
    return (price * hours + ebs) * share


@pytest.fixture
def reclaimed_job(account: Account) -> dict:
    """Job 41: attempt 1 on a g5.xlarge in us-east-1a, reclaimed (NODE_FAIL); attempt 2
    requeued onto a g6.xlarge in us-east-1b holding 2 of its 4 vCPUs, completed."""
    first = account.launch(node="gpu-1", instance_type="g5.xlarge", zone="us-east-1a")
    second = account.launch(node="gpu-2", instance_type="g6.xlarge", zone="us-east-1b")
    t0 = max(launch_time(account, first), launch_time(account, second))
    attempts = [
        slurm_env(
            "41", nodes="gpu-1", start=t0 + 60, end=t0 + 60 + 1800, state="NODE_FAIL", procs=4
        ),
        slurm_env(
            "41", nodes="gpu-[2]", start=t0 + 2000, end=t0 + 2000 + 5400, state="COMPLETED", procs=2
        ),
    ]
    expected_first = expected_node_cost(account, first, start=t0 + 60, end=t0 + 1860, share=1.0)
    expected_second = expected_node_cost(account, second, start=t0 + 2000, end=t0 + 7400, share=0.5)
    return {
        "instances": (first, second),
        "attempts": attempts,
        "expected": (expected_first, expected_second),
        "now": t0 + 7400 + 60,
    }
