"""EC2 calls of the power-save programs: CreateFleet, tagging, finding and terminating nodes.

Every call carries or filters on this cluster's tag (``relion_spot.tags.CLUSTER``): the IAM policy
lets the controller launch only with that tag in the request and terminate or retag only
instances that carry it, and filtering on it is what keeps another cluster's instances out of
reach even where IAM would allow more (a moto run, an admin's credentials).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import tags
from ..teardown.sweep import LIVE_STATES, SweepResult, terminate_with_fallback
from .config import LAUNCH_TEMPLATE_VERSION, NodeGroup

log = logging.getLogger(__name__)

CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "UnfulfillableCapacity",
        "InsufficientHostCapacity",
    }
)
"""EC2 error codes that mean "no spot capacity for this type here now", not a broken setup."""
CONFIGURATION_ERRORS = frozenset(
    {
        "MaxSpotInstanceCountExceeded",
        "VcpuLimitExceeded",
        "Unsupported",
        "UnauthorizedOperation",
        "OptInRequired",
        "PendingVerification",
    }
)
"""EC2 error codes no retry will cure: the account's spot vCPU quota (0 in a new account), a
type a zone does not offer, a missing permission. Jobs are held with the reason instead of
launching and failing over and over (``relion-spot doctor`` names the fix)."""
MAX_FLEET_CAPACITY = 500
"""Instances asked of one instant fleet; more nodes are split over several calls."""
FILTER_VALUES = 200
"""DescribeInstances takes at most 200 values per filter."""
TAG_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
"""A fresh instance may be unknown to CreateTags for a moment (eventual consistency)."""


AWS_ERRORS = (ClientError, BotoCoreError)
"""What a boto3 call raises when AWS refuses or cannot be reached."""


def aws_error_text(err: Exception) -> str:
    """``Code: message`` of a refusal, or botocore's own sentence for a connection problem."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"
    return str(err)


@dataclass(frozen=True)
class LaunchError:
    code: str
    message: str
    instance_type: str = ""

    @property
    def is_capacity(self) -> bool:
        return self.code in CAPACITY_ERRORS

    @property
    def is_configuration(self) -> bool:
        return self.code in CONFIGURATION_ERRORS

    def describe(self) -> str:
        where = f" ({self.instance_type})" if self.instance_type else ""
        return f"{self.code}{where}: {self.message}".strip().rstrip(":")


@dataclass(frozen=True)
class Launched:
    instance_id: str
    instance_type: str
    subnet_id: str


@dataclass
class FleetOutcome:
    launched: list[Launched] = field(default_factory=list)
    errors: list[LaunchError] = field(default_factory=list)


def launch_tags(cluster: str, partition: str) -> list[dict[str, str]]:
    return [{"Key": tags.CLUSTER, "Value": cluster}, {"Key": tags.PARTITION, "Value": partition}]


def fleet_request(
    *,
    cluster: str,
    group: NodeGroup,
    instance_types: Sequence[str],
    subnets: Sequence[str],
    count: int,
) -> dict[str, Any]:
    """One instant spot fleet of ``count`` instances over every type x subnet pair.

    An instant fleet tags only the fleet and the instances (volumes and network interfaces get
    their tags from the launch template); all instances get the same tags, so the node name and
    type are added per instance right after (``tag_nodes``).
    """
    request_tags = launch_tags(cluster, group.partition)
    return {
        "Type": "instant",
        "SpotOptions": {
            "AllocationStrategy": "price-capacity-optimized",
            "InstanceInterruptionBehavior": "terminate",
        },
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": count,
            "SpotTargetCapacity": count,
            "DefaultTargetCapacityType": "spot",
        },
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": group.launch_template_id,
                    "Version": LAUNCH_TEMPLATE_VERSION,
                },
                "Overrides": [
                    {"InstanceType": instance_type, "SubnetId": subnet}
                    for instance_type in instance_types
                    for subnet in subnets
                ],
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": request_tags},
            {"ResourceType": "fleet", "Tags": request_tags},
        ],
    }


def create_fleet(ec2: Any, request: dict[str, Any]) -> FleetOutcome:
    """Launch; a refused request becomes one error, so the caller treats every failure alike."""
    try:
        response = ec2.create_fleet(**request)
    except ClientError as err:
        error = err.response.get("Error", {})
        return FleetOutcome(
            errors=[LaunchError(str(error.get("Code", "Error")), str(error.get("Message", "")))]
        )
    except BotoCoreError as err:
        return FleetOutcome(errors=[LaunchError(type(err).__name__, str(err))])
    outcome = FleetOutcome()
    for entry in response.get("Instances") or []:
        overrides = (entry.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
        instance_type = entry.get("InstanceType") or overrides.get("InstanceType", "")
        for instance_id in entry.get("InstanceIds") or []:
            outcome.launched.append(
                Launched(instance_id, instance_type, overrides.get("SubnetId", ""))
            )
    for entry in response.get("Errors") or []:
        overrides = (entry.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
        outcome.errors.append(
            LaunchError(
                str(entry.get("ErrorCode", "Error")),
                str(entry.get("ErrorMessage", "")),
                str(overrides.get("InstanceType", "")),
            )
        )
    return outcome


def tag_node(
    ec2: Any,
    instance: Launched,
    node: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Give one instance its node name and type; None on success, else why it failed."""
    node_tags = [
        {"Key": tags.NODE, "Value": node},
        {"Key": tags.INSTANCE_TYPE, "Value": instance.instance_type},
    ]
    for delay in (*TAG_RETRY_SECONDS, None):
        try:
            ec2.create_tags(Resources=[instance.instance_id], Tags=node_tags)
            return None
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code != "InvalidInstanceID.NotFound" or delay is None:
                return f"{code}: {error.get('Message', '')}"
            sleep(delay)
        except BotoCoreError as err:
            return str(err)
    return None  # not reached: the last round returns


@dataclass(frozen=True)
class NodeInstance:
    instance_id: str
    node: str
    state: str
    instance_type: str
    launch_time: float


def node_instances(ec2: Any, cluster: str, nodes: Iterable[str]) -> list[NodeInstance]:
    """Live instances of ``cluster`` tagged as one of ``nodes``."""
    names = sorted(set(nodes))
    found: list[NodeInstance] = []
    for start in range(0, len(names), FILTER_VALUES):
        found += _describe(
            ec2,
            [
                {"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]},
                {"Name": f"tag:{tags.NODE}", "Values": names[start : start + FILTER_VALUES]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ],
        )
    return found


def unnamed_instances(ec2: Any, cluster: str, partitions: Iterable[str]) -> list[NodeInstance]:
    """Live instances of ``cluster`` in ``partitions`` that never got a node name."""
    found = _describe(
        ec2,
        [
            {"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]},
            {"Name": f"tag:{tags.PARTITION}", "Values": sorted(set(partitions))},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ],
    )
    return [i for i in found if not i.node]


def _describe(ec2: Any, filters: list[dict[str, Any]]) -> list[NodeInstance]:
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                instance_tags = {t["Key"]: t["Value"] for t in raw.get("Tags") or []}
                launch = raw.get("LaunchTime")
                found.append(
                    NodeInstance(
                        instance_id=raw["InstanceId"],
                        node=instance_tags.get(tags.NODE, ""),
                        state=raw["State"]["Name"],
                        instance_type=raw.get("InstanceType", ""),
                        launch_time=launch.timestamp() if launch else 0.0,
                    )
                )
    return found


def terminate(ec2: Any, cluster: str, instance_ids: Sequence[str]) -> SweepResult:
    """Terminate; one refusal does not stop the rest (see ``teardown.sweep``). EC2 out of
    reach counts every instance as refused, with the reason."""
    result = SweepResult(cluster_name=cluster)
    if instance_ids:
        try:
            terminate_with_fallback(ec2, sorted(instance_ids), result)
        except BotoCoreError as err:
            for instance_id in instance_ids:
                if instance_id not in result.terminated:
                    result.refused[instance_id] = str(err)
    return result
