"""An emulated EC2 account (moto, in-process) with one cluster's node groups, a recorder standing
in for the Slurm commands, and a way to make EC2 run out of spot capacity.

moto fills every CreateFleet from the first override and never reports a shortage, so the
shortage is made on EC2's side of the real boto3 client with botocore's event hooks:
``before-parameter-build`` takes the empty pools out of the request (what EC2 skips), ``after-call``
adds the per-pool ``Errors`` entries EC2 returns for them, and ``before-call`` answers for EC2
when no pool is left (moto would otherwise launch the template's default type). moto still
launches whatever the remaining pools can give, so fallback is observed on real instances.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from relion_spot import tags
from relion_spot.powersave.slurm import CommandResult

CLUSTER = "lab-1gpu"
GPU_TYPES = ("g5.xlarge", "g6.xlarge")
CPU_TYPES = ("m6i.xlarge", "m7i.xlarge")
NO_CAPACITY_MESSAGE = "There is no Spot capacity available that matches your request."


class Recorder:
    """Stands in for scontrol/squeue: records each command line, answers from ``replies``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.replies: dict[tuple[str, ...], CommandResult] = {}

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        for prefix, reply in self.replies.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return reply
        return CommandResult(0)

    def updates(self) -> list[list[str]]:
        return [c for c in self.calls if c[:2] == ["scontrol", "update"]]


@dataclass
class Cloud:
    ec2: Any
    subnets: list[str]
    templates: dict[str, str]
    image_id: str
    state_dir: Path
    log_file: Path

    def env(self, cluster: str = CLUSTER, **overrides: str) -> dict[str, str]:
        groups = {
            "gpu": {
                "launch_template_id": self.templates["gpu"],
                "instance_types": list(GPU_TYPES),
                "max_nodes": 4,
                "gpus_per_node": 1,
            },
            "cpu": {
                "launch_template_id": self.templates["cpu"],
                "instance_types": list(CPU_TYPES),
                "max_nodes": 2,
                "gpus_per_node": 0,
            },
        }
        env = {
            "AWS_DEFAULT_REGION": "us-east-1",
            "RELION_SPOT_CLUSTER": cluster,
            "RELION_SPOT_NODE_GROUPS": json.dumps(groups),
            "RELION_SPOT_SUBNETS": ",".join(self.subnets),
            "RELION_SPOT_NODE_IDLE_SECONDS": "600",
            "RELION_SPOT_POWERSAVE_STATE_DIR": str(self.state_dir),
            "RELION_SPOT_POWERSAVE_LOG": str(self.log_file),
        }
        env.update(overrides)
        return env

    def instances(self, *states: str) -> list[dict[str, Any]]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}] if states else []
        found = []
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
        return found

    def live(self, cluster: str = CLUSTER) -> dict[str, dict[str, Any]]:
        """Node name -> the running instance of ``cluster`` playing it."""
        result = {}
        for instance in self.instances("pending", "running"):
            instance_tags = tag_map(instance)
            if instance_tags.get(tags.CLUSTER) == cluster:
                result[instance_tags.get(tags.NODE, "")] = instance
        return result


def tag_map(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


IMAGE_ID = "ami-0123456789abcdef0"


@pytest.fixture(scope="module")
def moto_ec2() -> Iterator[tuple[Any, Any]]:
    """One emulated account and EC2 client per module (building an EC2 client takes most of a
    second), emptied before every test by ``cloud``."""
    import boto3
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as patch:
        # moto's catalogue of public AMIs takes seconds to load; no test here needs it.
        patch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        with mock_aws() as mock:
            client = boto3.client(
                "ec2",
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            yield mock, client


@pytest.fixture
def cloud(moto_ec2: tuple[Any, Any], tmp_path: Path) -> Cloud:
    mock, ec2 = moto_ec2
    mock.reset()
    return _account(ec2, tmp_path)


def _account(ec2: Any, tmp_path: Path) -> Cloud:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone)["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate(("us-east-1a", "us-east-1b"), start=1)
    ]
    templates = {
        name: ec2.create_launch_template(
            LaunchTemplateName=f"{CLUSTER}-{name}",
            LaunchTemplateData={"ImageId": IMAGE_ID, "InstanceType": default_type},
        )["LaunchTemplate"]["LaunchTemplateId"]
        for name, default_type in (("gpu", GPU_TYPES[0]), ("cpu", CPU_TYPES[0]))
    }
    return Cloud(ec2, subnets, templates, IMAGE_ID, tmp_path / "state", tmp_path / "powersave.log")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@dataclass
class CapacityPools:
    """EC2's answer to CreateFleet when some spot pools are empty (see the module docstring)."""

    client: Any
    empty: dict[str, str] = field(default_factory=dict)
    """Instance type -> the error code EC2 gives for its pools."""
    at_most: int | None = None
    """Instances any one fleet can get in total (a partial fleet), with ``partial_code``."""
    partial_code: str = "InsufficientInstanceCapacity"
    requests: list[dict[str, Any]] = field(default_factory=list)
    _errors: list[dict[str, Any]] = field(default_factory=list)
    _nothing_left: bool = False

    def __post_init__(self) -> None:
        events = self.client.meta.events
        events.register("before-parameter-build.ec2.CreateFleet", self._take_out_empty_pools)
        events.register("before-call.ec2.CreateFleet", self._answer_when_nothing_left)
        events.register("after-call.ec2.CreateFleet", self._report_empty_pools)

    def unregister(self) -> None:
        events = self.client.meta.events
        events.unregister("before-parameter-build.ec2.CreateFleet", self._take_out_empty_pools)
        events.unregister("before-call.ec2.CreateFleet", self._answer_when_nothing_left)
        events.unregister("after-call.ec2.CreateFleet", self._report_empty_pools)

    def requested_types(self, index: int = -1) -> list[str]:
        overrides = self.requests[index]["LaunchTemplateConfigs"][0]["Overrides"]
        return list(dict.fromkeys(o["InstanceType"] for o in overrides))

    def _take_out_empty_pools(self, params: dict[str, Any], **_: Any) -> None:
        self.requests.append(copy.deepcopy(params))
        self._errors = []
        for config in params["LaunchTemplateConfigs"]:
            kept = []
            for override in config["Overrides"]:
                code = self.empty.get(override["InstanceType"])
                if code:
                    self._errors.append(self._error(config, override, code))
                else:
                    kept.append(override)
            config["Overrides"] = kept
        self._nothing_left = not any(c["Overrides"] for c in params["LaunchTemplateConfigs"])
        capacity = params["TargetCapacitySpecification"]
        asked = capacity["TotalTargetCapacity"]
        if self.at_most is not None and asked > self.at_most and not self._nothing_left:
            capacity["TotalTargetCapacity"] = capacity["SpotTargetCapacity"] = self.at_most
            config = params["LaunchTemplateConfigs"][0]
            self._errors.append(self._error(config, config["Overrides"][0], self.partial_code))

    def _answer_when_nothing_left(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not self._nothing_left:
            return None
        http = AWSResponse("https://ec2.us-east-1.amazonaws.com/", 200, {}, None)
        return http, {"FleetId": "fleet-empty-pools", "Instances": [], "Errors": self._errors}

    def _report_empty_pools(self, parsed: dict[str, Any], **_: Any) -> None:
        if not self._nothing_left:
            parsed.setdefault("Errors", []).extend(self._errors)

    @staticmethod
    def _error(config: dict[str, Any], override: dict[str, Any], code: str) -> dict[str, Any]:
        return {
            "LaunchTemplateAndOverrides": {
                "LaunchTemplateSpecification": config["LaunchTemplateSpecification"],
                "Overrides": dict(override),
            },
            "Lifecycle": "spot",
            "ErrorCode": code,
            "ErrorMessage": NO_CAPACITY_MESSAGE,
        }


@pytest.fixture
def pools(cloud: Cloud) -> Iterator[CapacityPools]:
    shaped = CapacityPools(cloud.ec2)
    yield shaped
    shaped.unregister()
