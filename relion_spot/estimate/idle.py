"""Price the standing resources of synthesized templates: everything that bills with no job.

Every resource type is either priced here or listed as billing only with use (requests, bytes,
GB stored), custom resources included; a type in neither list is an error, so a new resource
forces a pricing decision instead of silently counting as free. Data at rest (EFS, DynamoDB
storage, logs) is excluded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices_us_east_1.json")

USAGE_BILLED = {
    "AWS::CDK::Metadata",
    "AWS::CloudFormation::WaitConditionHandle",
    "AWS::DynamoDB::Table",
    "AWS::EC2::EIPAssociation",
    "AWS::EC2::FlowLog",
    "AWS::EC2::InternetGateway",
    "AWS::EC2::LaunchTemplate",
    "AWS::EC2::Route",
    "AWS::EC2::RouteTable",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::SecurityGroupEgress",
    "AWS::EC2::SecurityGroupIngress",
    "AWS::EC2::Subnet",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::VPC",
    "AWS::EC2::VPCGatewayAttachment",
    "AWS::ECS::Cluster",
    "AWS::ECS::ClusterCapacityProviderAssociations",
    "AWS::ECS::TaskDefinition",
    "AWS::EFS::AccessPoint",
    "AWS::EFS::FileSystem",
    "AWS::EFS::MountTarget",
    "AWS::SSM::Parameter",
    "AWS::Events::Rule",
    "AWS::FIS::ExperimentTemplate",
    "AWS::IAM::Group",
    "AWS::IAM::InstanceProfile",
    "AWS::IAM::ManagedPolicy",
    "AWS::IAM::Policy",
    "AWS::IAM::Role",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Lambda::Function",
    "AWS::Lambda::Permission",
    "AWS::Logs::LogGroup",
    "AWS::S3::Bucket",
    "AWS::S3::BucketPolicy",
    "AWS::SQS::Queue",
    "AWS::SQS::QueuePolicy",
    "AWS::Scheduler::Schedule",
    "AWS::SNS::Subscription",
    "AWS::SNS::TopicPolicy",
    "AWS::SNS::Topic",
}
"""Types that cost nothing while idle: free, or billed only per request, byte or GB stored."""

FREE_CUSTOM_RESOURCES = {
    "Custom::SlurmKey": (
        "the cluster's Slurm key: an SSM Parameter Store SecureString, Standard tier, encrypted "
        "with the AWS managed key aws/ssm (neither bills a month); its function runs only when "
        "the stack is deployed or deleted"
    ),
    "Custom::ClusterTeardown": "its function runs only when the stack is deleted",
    "Custom::ServiceLinkedRole": (
        "its function runs only when the stack is deployed; the role it makes is free"
    ),
    "Custom::VpcRestrictDefaultSG": (
        "CDK's; its function runs only when the stack is deployed and empties a free group"
    ),
    "Custom::S3AutoDeleteObjects": (
        "CDK's; its function runs only when the stack is deleted and empties the results "
        "exchange bucket"
    ),
}
"""Custom resources by type, each with why it stands free: each is a function (billed per run,
as ``AWS::Lambda::Function``) that runs only on a deploy or delete."""
ITEMIZED_CUSTOM_RESOURCES = {"Custom::SlurmKey": "Slurm key (SSM SecureString, Standard tier)"}
"""Free custom resources shown in the estimate anyway, at $0.00: what a reader looks for there."""


@dataclass
class LineItem:
    stack: str
    resource: str
    what: str
    usd_month_controller_up: float
    usd_month_controller_asleep: float


@dataclass
class Estimate:
    prices: dict[str, Any]
    items: list[LineItem] = field(default_factory=list)

    def total(self, *, controller_up: bool, stack: str | None = None) -> float:
        return sum(
            i.usd_month_controller_up if controller_up else i.usd_month_controller_asleep
            for i in self.items
            if stack is None or i.stack == stack
        )

    def stacks(self) -> list[str]:
        return sorted({i.stack for i in self.items})


class UnpricedResource(ValueError):
    pass


def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def estimate_templates(
    templates: dict[str, dict], prices: dict[str, Any] | None = None
) -> Estimate:
    """``templates``: stack name -> CloudFormation template (as synthesized)."""
    prices = prices or load_prices()
    estimate = Estimate(prices=prices)
    for stack, template in sorted(templates.items()):
        resources = template.get("Resources", {})
        for logical_id, resource in resources.items():
            estimate.items.extend(_price(stack, logical_id, resource, resources, prices))
    return estimate


def _per_month(prices: dict[str, Any], hourly: float) -> float:
    return hourly * prices["hours_per_month"]


def _price(
    stack: str, logical_id: str, resource: dict, resources: dict, prices: dict[str, Any]
) -> Iterable[LineItem]:
    kind = resource["Type"]
    props = resource.get("Properties", {})
    if kind == "AWS::ECS::Service":
        yield from _price_fargate_service(stack, logical_id, props, resources, prices)
    elif kind == "AWS::EC2::NatGateway":
        month = _per_month(prices, prices["nat_gateway_hour"])
        yield LineItem(stack, logical_id, "NAT gateway", month, month)
    elif kind == "AWS::EC2::Instance":
        instance_type = props["InstanceType"]
        if instance_type not in prices["ec2_hour"]:
            raise UnpricedResource(f"{stack}/{logical_id}: no price for EC2 {instance_type}")
        month = _per_month(prices, prices["ec2_hour"][instance_type] + prices["public_ipv4_hour"])
        month += prices["ebs_gp3_gb_month"] * prices["nat_instance_root_gb"]
        yield LineItem(
            stack, logical_id, f"{instance_type} (always on, public IPv4, root EBS)", month, month
        )
    elif kind == "AWS::EC2::EIP":
        month = _per_month(prices, prices["public_ipv4_hour"])
        yield LineItem(stack, logical_id, "Elastic IP", month, month)
    elif kind == "AWS::ServiceDiscovery::PrivateDnsNamespace":
        month = prices["private_hosted_zone_month"]
        yield LineItem(stack, logical_id, "Route 53 private hosted zone (Cloud Map)", month, month)
    elif kind == "AWS::ServiceDiscovery::Service":
        yield LineItem(
            stack,
            logical_id,
            "Cloud Map registered controller",
            prices["cloud_map_instance_month"],
            0.0,
        )
    elif kind == "AWS::KMS::Key":
        yield LineItem(
            stack, logical_id, "KMS customer key", prices["kms_key_month"], prices["kms_key_month"]
        )
    elif kind == "AWS::EC2::VPCEndpoint":
        if props.get("VpcEndpointType", "Gateway") == "Interface":
            month = _per_month(prices, prices["interface_endpoint_az_hour"]) * len(
                props.get("SubnetIds", [])
            )
            yield LineItem(stack, logical_id, "interface VPC endpoint", month, month)
    elif kind == "AWS::CloudWatch::Dashboard":
        # The first 3 dashboards of an account are free, but which 3 depends on what else the
        # account runs, and three clusters already use them up: each is priced, so the
        # estimate never undershoots.
        yield LineItem(
            stack,
            logical_id,
            "CloudWatch dashboard",
            prices["dashboard_month"],
            prices["dashboard_month"],
        )
    elif kind == "AWS::CloudWatch::Alarm":
        # CloudWatch bills an alarm per metric it watches: a metric-math alarm over n metrics
        # costs n alarm-months.
        watched = max(1, sum("MetricStat" in m for m in props.get("Metrics") or []))
        month = prices["alarm_month"] * watched
        what = "CloudWatch alarm" + (f" over {watched} metrics" if watched > 1 else "")
        yield LineItem(stack, logical_id, what, month, month)
    elif kind in ITEMIZED_CUSTOM_RESOURCES:
        yield LineItem(stack, logical_id, ITEMIZED_CUSTOM_RESOURCES[kind], 0.0, 0.0)
    elif kind not in USAGE_BILLED and kind not in FREE_CUSTOM_RESOURCES:
        raise UnpricedResource(
            f"{stack}/{logical_id}: resource type {kind} has no idle price; add it to "
            "relion_spot/estimate/idle.py"
        )


def _price_fargate_service(
    stack: str, logical_id: str, props: dict, resources: dict, prices: dict[str, Any]
) -> Iterable[LineItem]:
    task_id = props["TaskDefinition"]["Ref"]
    task = resources[task_id]["Properties"]
    vcpu = int(task["Cpu"]) / 1024
    gb = int(task["Memory"]) / 1024
    strategy = props.get("CapacityProviderStrategy") or [{"CapacityProvider": "FARGATE"}]
    market = "spot" if strategy[0]["CapacityProvider"] == "FARGATE_SPOT" else "on-demand"
    rate = prices["fargate"][market]
    count = int(props.get("DesiredCount", 1))
    hourly = count * (vcpu * rate["vcpu_hour"] + gb * rate["gb_hour"])
    network = props.get("NetworkConfiguration", {}).get("AwsvpcConfiguration", {})
    public_ip = network.get("AssignPublicIp") == "ENABLED"
    if public_ip:
        hourly += count * prices["public_ipv4_hour"]
    what = f"Fargate {market} {vcpu:g} vCPU / {gb:g} GB x{count}" + (
        " + public IPv4" if public_ip else ""
    )
    yield LineItem(stack, logical_id, what, _per_month(prices, hourly), 0.0)


def read_cloud_assembly(outdir: Path) -> dict[str, dict]:
    """Stack name -> template, for every stack in a ``cdk synth`` output directory."""
    manifest = json.loads((outdir / "manifest.json").read_text())
    templates = {}
    for name, artifact in manifest["artifacts"].items():
        if artifact.get("type") == "aws:cloudformation:stack":
            template_file = artifact["properties"]["templateFile"]
            templates[artifact.get("displayName", name)] = json.loads(
                (outdir / template_file).read_text()
            )
    return templates
