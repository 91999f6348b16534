"""Every acknowledged cdk-nag finding, each scoped to one resource and carrying its reason.

Kept in one place so a reviewer can read the whole list of accepted risks at once. Anything not
acknowledged here fails synth (see tests/test_nag.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Acknowledgment, Stack, Token, Validations
from aws_cdk import aws_iam as iam
from constructs import IConstruct

from .constructs.results_exchange import EXPIRY_DAYS, RESULTS_PREFIX, UPLOADS_PREFIX
from .stacks.cluster import ClusterStack
from .stacks.network import NetworkStack

_IDS_UNKNOWN = "ids do not exist before the launch, so EC2 needs them named by wildcard"
_LAUNCH_REASONS = {
    "instance": (
        "CreateFleet on instances only with this cluster's and partition's request tags and the "
        "group's instance types; RunInstances also only through the group's launch template "
        "(ec2:LaunchTemplate) on the spot market; tag-on-create only with the cluster tag; node "
        "names only as the node/type tag keys, and terminate, only on instances already tagged "
        "with this cluster"
    ),
    "volume": (
        "RunInstances creates volumes only through this cluster's launch templates "
        "(ec2:LaunchTemplate); tag-on-create only with the cluster tag"
    ),
    "network-interface": (
        "RunInstances creates interfaces only through this cluster's launch templates and in "
        "its VPC (ec2:LaunchTemplate, ec2:Vpc); tag-on-create only with the cluster tag"
    ),
    "subnet": (
        "RunInstances uses subnets only through this cluster's launch templates and in its VPC; "
        "CreateFleet overrides only subnets of its VPC (ec2:Vpc)"
    ),
    "security-group": (
        "RunInstances uses security groups only through this cluster's launch templates and in "
        "its VPC (ec2:LaunchTemplate, ec2:Vpc)"
    ),
    "fleet": (
        "CreateFleet and its tag-on-create only when the request tags the fleet with this "
        "cluster (aws:RequestTag)"
    ),
    "spot-instances-request": (
        "RunInstances on a spot request carries no key but request tags, which neither the fleet "
        "nor the launch template sets; a spot request is only ever created with an instance, "
        "which is held to the launch template, the spot market, the types and the cluster tag"
    ),
}


def _as_nag_renders(stack: Stack, value: str, pseudo: str) -> str:
    """cdk-nag names unresolved pseudo parameters like ``<AWS::AccountId>`` in finding ids."""
    return f"<AWS::{pseudo}>" if Token.is_unresolved(value) else value


def _ack(construct: IConstruct | None, rule: str, reason: str) -> None:
    if construct is None:
        raise LookupError(f"acknowledgement of {rule} names a resource that no longer exists")
    Validations.of(construct).acknowledge(Acknowledgment(id=rule, reason=reason))


def _default_policy(identity: iam.IRole | iam.IGroup | None) -> IConstruct | None:
    """The CfnPolicy CDK attaches to a role or group as grants are added."""
    if identity is None:
        return None
    return identity.node.find_child("DefaultPolicy").node.default_child


def acknowledge_findings(stacks: Iterable[Stack]) -> None:
    for stack in stacks:
        if isinstance(stack, ClusterStack):
            _acknowledge_cluster(stack)
        elif isinstance(stack, NetworkStack):
            _acknowledge_network(stack)


def _acknowledge_network(stack: NetworkStack) -> None:
    for nat in stack.network.nat_instances:
        _ack(
            nat,
            "AwsSolutions-EC26",
            "The NAT instance's root volume is encrypted by a property override (BlockDevice"
            "Mappings) that the rule, which reads the L2 props, cannot see.",
        )
        _ack(
            nat,
            "AwsSolutions-EC28",
            "Detailed monitoring would add ~$2/month to a NAT chosen to cost ~$6/month; basic "
            "5-minute metrics are enough to see it is up.",
        )
        _ack(
            nat,
            "AwsSolutions-EC29",
            "The NAT instance is stateless and replaced by a redeploy; termination protection "
            "would only make cdk destroy fail.",
        )


def _acknowledge_cluster(stack: ClusterStack) -> None:
    controller = stack.controller
    partition = _as_nag_renders(stack, stack.partition, "Partition")
    account = _as_nag_renders(stack, stack.account, "AccountId")
    account_arn = f"arn:{partition}:ec2:{stack.region}:{account}"
    _ack(
        controller.cluster.node.default_child,
        "AwsSolutions-ECS4",
        "Container Insights bills per metric for a single quarter-vCPU task; slurmctld logs to "
        "CloudWatch Logs and job/node metrics are published by the cost tracker.",
    )
    _ack(
        controller.task_definition.node.default_child,
        "AwsSolutions-ECS2",
        "The environment holds only non-secret wiring (cluster name, launch template ids, "
        "subnets); the one secret, the Slurm key, is read from Parameter Store at start.",
    )

    task_policy = _default_policy(controller.task_role)
    for kind, reason in _LAUNCH_REASONS.items():
        _ack(
            task_policy,
            f"AwsSolutions-IAM5[Resource::{account_arn}:{kind}/*]",
            f"{reason}; {_IDS_UNKNOWN}.",
        )
    _ack(
        task_policy,
        f"AwsSolutions-IAM5[Resource::arn:{partition}:ec2:{stack.region}::image/*]",
        "RunInstances only on the image the group's launch template names "
        "(ec2:LaunchTemplate and ec2:IsLaunchTemplateResource); the template resolves it from a "
        "public SSM parameter at deploy time, so its id is not known at synth. CreateFleet gets "
        "no image at all: an AMI in a fleet's overrides is refused.",
    )
    _ack(
        task_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeInstances and ec2:DescribeVolumes support no resource-level permissions.",
    )

    execution_policy = _default_policy(controller.task_definition.execution_role)
    _ack(
        execution_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "ecr:GetAuthorizationToken, granted by CDK for pulling the controller image, supports "
        "no resource-level permissions.",
    )

    for group in (stack.gpu_nodes, stack.cpu_nodes):
        node_policy = _default_policy(group.role)
        _ack(
            node_policy,
            f"AwsSolutions-IAM5[Resource::{account_arn}:instance/*]",
            "A node may set or clear only the job tags (aws:TagKeys) and only on instances "
            "tagged with this cluster, and terminate (when idle with no controller answering) "
            "only instances tagged with this cluster and its partition; instance ids are not "
            "known before launch.",
        )
        _ack(
            node_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken (granted by CDK for pulling the Slurm image) and "
            "ec2:DescribeTags (the Epilog reading the job tag back) support no resource-level "
            "permissions."
            + (
                " Nor does cloudwatch:PutMetricData (the CloudWatch agent's GPU metrics), held "
                "to the CWAgent namespace by condition."
                if group.gpus_per_node
                else ""
            ),
        )

    reader = stack.stage_reader
    for bucket in reader.buckets if reader is not None else ():
        assert reader is not None
        _ack(
            _default_policy(reader.role),
            f"AwsSolutions-IAM5[Resource::arn:{partition}:s3:::{bucket}/*]",
            f"Staging jobs read (GetObject only) the objects of {bucket}, a bucket the lab "
            "named in the stage_buckets setting; the keys they stage are chosen per job.",
        )

    exchange = stack.results_exchange
    _ack(
        exchange.bucket.node.default_child,
        "AwsSolutions-S1",
        f"The exchange bucket holds only copies (results already on the cluster's EFS, uploads "
        f"of folders the lab keeps), each expiring after {EXPIRY_DAYS} days; access logs would "
        "be a second bucket that outlives them. Who wrote or read which copy is for CloudTrail "
        "S3 data events to record, where the account turns them on.",
    )
    bucket = Stack.of(stack).resolve(exchange.bucket.bucket_arn)["Fn::GetAtt"][0]
    results = f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{RESULTS_PREFIX}*]"
    uploads = f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{UPLOADS_PREFIX}*]"
    job_policy = _default_policy(exchange.job_role)
    _ack(
        job_policy,
        results,
        f"Export jobs write (PutObject and AbortMultipartUpload only: no read, list or delete) "
        f"under {RESULTS_PREFIX} of this cluster's own exchange bucket; the node's broker "
        "narrows each session to the job's own submission prefix.",
    )
    _ack(
        job_policy,
        uploads,
        f"Import jobs read (GetObject only: no write, list or delete) the lab's uploads under "
        f"{UPLOADS_PREFIX} of this cluster's own exchange bucket; the node's broker narrows each "
        "session to the job's own submission prefix.",
    )

    cost = stack.cost_tracker
    cost_policy = _default_policy(cost.role)
    _ack(
        cost_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "EC2 Describe* and ce:GetCostAndUsage support no resource-level permissions; "
        "cloudwatch:PutMetricData is held to the RelionSpot namespace by condition.",
    )
    for kind in ("instance", "volume", "network-interface"):
        _ack(
            cost_policy,
            f"AwsSolutions-IAM5[Resource::{account_arn}:{kind}/*]",
            "Tag repair may only add the launch tag keys (aws:TagKeys), only on resources "
            "already tagged with this cluster or, for untagged volumes and interfaces, only "
            "by tagging them with this cluster; ids are unknown before launch.",
        )
    costs_arn = Stack.of(stack).resolve(cost.costs_table.table_arn)["Fn::GetAtt"][0]
    _ack(
        cost_policy,
        f"AwsSolutions-IAM5[Resource::<{costs_arn}.Arn>/index/*]",
        "Queries on the job cost table's own secondary index; CDK grants indexes by the "
        "table's /index/* ARN.",
    )

    lab = stack.lab_access
    for policy in (lab.member_policy, lab.admin_policy):
        _ack(
            policy.node.default_child,
            f"AwsSolutions-IAM5[Resource::arn:{partition}:cloudformation:{stack.region}:"
            f"{account}:stack/{stack.stack_name}/*]",
            "DescribeStacks of this cluster's own stack only; a stack ARN ends in an id "
            "CloudFormation assigns at create.",
        )
        _ack(
            policy.node.default_child,
            results,
            f"relion-spot pull reads (GetObject only) the copies under {RESULTS_PREFIX} of this "
            "cluster's own exchange bucket; the keys are the finished jobs' files.",
        )
        _ack(
            policy.node.default_child,
            uploads,
            f"relion-spot stage uploads (PutObject and AbortMultipartUpload only: no read or "
            f"delete) a local folder under {UPLOADS_PREFIX} of this cluster's own exchange "
            "bucket; the keys are the folder's files under a new submission id.",
        )
    log_group = Stack.of(stack).resolve(controller.log_group.log_group_name)["Ref"]
    _ack(
        lab.admin_policy.node.default_child,
        f"AwsSolutions-IAM5[Resource::arn:{partition}:logs:{stack.region}:{account}:"
        f"log-group:<{log_group}>:log-stream:*]",
        "GetLogEvents on the streams of the controller's own log group; stream names are "
        "made by ECS per task.",
    )

    teardown_policy = _default_policy(stack.teardown.role)
    _ack(
        teardown_policy,
        f"AwsSolutions-IAM5[Resource::{account_arn}:instance/*]",
        "TerminateInstances only on instances tagged with this cluster (aws:ResourceTag).",
    )
    _ack(
        teardown_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeInstances supports no resource-level permissions.",
    )

    drill_policy = _default_policy(stack.drill.role)
    _ack(
        drill_policy,
        f"AwsSolutions-IAM5[Resource::{account_arn}:instance/*]",
        "AWS FIS may send spot interruption notices only to instances tagged with this cluster "
        "(aws:ResourceTag); instance ids are not known before launch.",
    )
    _ack(
        drill_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeInstances (FIS finding the drill's target by tag) supports no "
        "resource-level permissions.",
    )
    users_policy = _default_policy(stack.users)
    _ack(
        users_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "relion-spot selftest reads the cluster's instances (ec2:DescribeInstances, held to the "
        "region) and a quota's default (servicequotas:GetAWSDefaultServiceQuota): neither "
        "supports resource-level permissions.",
    )
    _ack(
        users_policy,
        f"AwsSolutions-IAM5[Resource::arn:{partition}:fis:{stack.region}:{account}:experiment/*]",
        "relion-spot selftest starts the cluster's own drill template only, tagging the "
        "experiment with this cluster (aws:RequestTag), and reads or stops only experiments "
        "carrying that tag (aws:ResourceTag); experiment ids are assigned at start.",
    )
