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
from relion_spot.cost import config
from relion_spot.cost.handler import Clients, CostService
from relion_spot.cost.store import create_tables

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
