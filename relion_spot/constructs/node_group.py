"""A Slurm partition's CLOUD nodes: what an instance is launched with, never the instances.

Instances are started by the controller's resume program (EC2 CreateFleet) when jobs wait and
terminated by its suspend program when idle, so the group costs nothing while the queue is
empty. This construct owns the launch template, the node role and the IAM that lets exactly this
cluster's controller launch and terminate exactly this cluster's instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from .. import catalog, tags
from ..intake.report import METRIC_NAMESPACE as JOB_METRICS_NAMESPACE
from ..node.bootstrap import GPU_METRICS_NAMESPACE

GPU_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/"
    "latest/ami-id"
)
"""AWS Deep Learning Base AMI (Amazon Linux 2023): NVIDIA driver, Docker and the NVIDIA container
toolkit, resolved from a public SSM parameter at deploy time (no lookup at synth)."""
CPU_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


class NodeGroup(Construct):
    """Launch template + node role for one partition of one cluster."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        partition: str,
        instance_types: tuple[str, ...],
        max_nodes: int,
        security_groups: list[ec2.ISecurityGroup],
        root_volume_gib: int,
        user_data: ec2.UserData | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self.partition = partition
        self.instance_types = instance_types
        self.max_nodes = max_nodes
        specs = [catalog.INSTANCE_TYPES[t] for t in instance_types]
        self.gpus_per_node = specs[0].gpus
        ami_parameter = GPU_AMI_PARAMETER if self.gpus_per_node else CPU_AMI_PARAMETER

        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"Nodes of partition {partition} of cluster {cluster_name}",
        )
        self._allow_job_tagging()
        self._allow_ending_an_orphan()
        if self.gpus_per_node:
            self._allow_gpu_metrics()
        primary_sg, *other_sgs = security_groups
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.from_ssm_parameter(ami_parameter),
            instance_type=ec2.InstanceType(instance_types[0]),
            role=self.role,
            security_group=primary_sg,
            require_imdsv2=True,
            http_put_response_hop_limit=2,
            instance_metadata_tags=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
            user_data=user_data,
        )
        for sg in other_sgs:
            self.launch_template.add_security_group(sg)
        Tags.of(self).add(tags.PARTITION, partition)
        self._tag_network_interfaces_at_launch()

    def _tag_network_interfaces_at_launch(self) -> None:
        """CDK propagates tags to the instance and volume specs; cost allocation wants the
        network interface tagged from launch too."""
        stack = Stack.of(self)
        cfn = self.launch_template.node.default_child
        assert isinstance(cfn, ec2.CfnLaunchTemplate)
        cfn.add_property_override(
            "LaunchTemplateData.TagSpecifications.2",
            {
                "ResourceType": "network-interface",
                "Tags": [
                    {"Key": tags.CLUSTER, "Value": self.cluster_name},
                    {"Key": tags.PARTITION, "Value": self.partition},
                    {"Key": tags.STACK, "Value": stack.stack_name},
                ],
            },
        )

    def _allow_job_tagging(self) -> None:
        """A node may set and clear the job tags on this cluster's instances, and nothing else;
        the Epilog reads the job tag back first (DescribeTags, which has no resource-level
        permission) so a late Epilog never clears the next job's tags.

        Narrower than "only itself" would need the policy variable ``${ec2:SourceInstanceARN}``
        as a Resource, which CloudFormation's validators reject; the blast radius is one job's
        labels on a sibling node of the same cluster.
        """
        self.role.add_to_policy(
            iam.PolicyStatement(sid="ReadJobTags", actions=["ec2:DescribeTags"], resources=["*"])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="SetClearJobTags",
                actions=["ec2:CreateTags", "ec2:DeleteTags"],
                resources=[f"{_ec2_arn(self)}:instance/*"],
                conditions={
                    "StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": self.cluster_name},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(tags.JOB_TAG_KEYS)},
                },
            )
        )

    def _allow_ending_an_orphan(self) -> None:
        """An idle node that no controller answers terminates itself (relion_spot.node.orphan).
        "Only itself" would need ``${ec2:SourceInstanceARN}`` as a Resource (see above); the
        grant reaches this cluster's instances of this partition, which the node's Slurm key
        already lets it power down through the controller."""
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="TerminateOrphanedNode",
                actions=["ec2:TerminateInstances"],
                resources=[f"{_ec2_arn(self)}:instance/*"],
                conditions={
                    "StringEquals": {
                        f"aws:ResourceTag/{tags.CLUSTER}": self.cluster_name,
                        f"aws:ResourceTag/{tags.PARTITION}": self.partition,
                    }
                },
            )
        )

    def _allow_gpu_metrics(self) -> None:
        """The node's CloudWatch agent publishes GPU metrics for the dashboard, and a job its
        resolution per iteration (relion_spot.intake.report). PutMetricData has no
        resource-level permission; the namespace condition is the scope.
        """
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="PublishGpuMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={
                    "StringEquals": {
                        "cloudwatch:namespace": [GPU_METRICS_NAMESPACE, JOB_METRICS_NAMESPACE]
                    }
                },
            )
        )

    @property
    def launch_template_id(self) -> str:
        template_id = self.launch_template.launch_template_id
        assert template_id is not None, "a LaunchTemplate created in this app always has an id"
        return template_id

    @property
    def launch_template_arn(self) -> str:
        stack = Stack.of(self)
        return (
            f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}:launch-template/"
            f"{self.launch_template_id}"
        )

    def instance_statements(self) -> list[iam.PolicyStatement]:
        """Launching this group's instances: CreateFleet with this cluster's and partition's
        request tags and the group's types; RunInstances also only through this group's
        template and on the spot market. One pair per group, as the types differ."""
        ec2_arn = _ec2_arn(self)
        name = self.partition.title()
        request_tags = {
            f"aws:RequestTag/{tags.CLUSTER}": self.cluster_name,
            f"aws:RequestTag/{tags.PARTITION}": self.partition,
            "ec2:InstanceType": list(self.instance_types),
        }
        return [
            iam.PolicyStatement(
                sid=f"FleetInstances{name}",
                actions=["ec2:CreateFleet"],
                resources=[f"{ec2_arn}:instance/*"],
                conditions={"StringEquals": request_tags},
            ),
            iam.PolicyStatement(
                sid=f"SpotInstances{name}",
                actions=["ec2:RunInstances"],
                resources=[f"{ec2_arn}:instance/*"],
                conditions={
                    "ArnEquals": {"ec2:LaunchTemplate": self.launch_template_arn},
                    # Spot only: enforced here rather than by market options in the launch
                    # template, which EC2 Fleet-family APIs (ASG, EKS, Fleet) refuse.
                    "StringEquals": {**request_tags, "ec2:InstanceMarketType": "spot"},
                },
            ),
        ]


def grant_launch(grantee: iam.IGrantable, groups: Sequence[NodeGroup], *, vpc: ec2.IVpc) -> None:
    """Let the controller's resume program launch these groups' nodes, and nothing else.

    EC2 authorizes an instant fleet twice: CreateFleet on what the request itself names (the
    fleet, its instances, the launch template, the override subnets), and RunInstances on what
    the launch template supplies (image, security groups, volume, interface, subnet, spot
    request). Each statement conditions only on keys that action carries for that resource type
    (IAM Service Authorization Reference):

    - CreateFleet carries neither ``ec2:LaunchTemplate`` nor ``ec2:InstanceMarketType``; it is
      held to the groups' templates by naming them as its resource, and its instances to the
      request tags and types (``NodeGroup.instance_statements``).
    - RunInstances carries ``ec2:LaunchTemplate`` on everything but the spot request, so every
      resource is held to the groups' templates; the instance also to the spot market; the image
      to being the template's own (``ec2:IsLaunchTemplateResource``); network resources to the
      cluster's VPC.

    Statements name all groups' templates at once where nothing else differs, which keeps the
    controller's policy inline (CDK moves an oversized one to extra managed policies). The fleet,
    override subnets, spot requests and tags at launch are ``grant_power_saving``'s; terminating
    is ``grant_terminate_cluster_instances``.
    """
    (scope, *_) = groups
    stack = Stack.of(scope)
    ec2_arn = _ec2_arn(scope)
    templates = {"ec2:LaunchTemplate": [g.launch_template_arn for g in groups]}
    statements = [
        iam.PolicyStatement(
            sid="LaunchFromTemplates",
            actions=["ec2:CreateFleet", "ec2:RunInstances"],
            resources=[g.launch_template_arn for g in groups],
        ),
        *(statement for group in groups for statement in group.instance_statements()),
        iam.PolicyStatement(
            sid="TemplateImages",
            actions=["ec2:RunInstances"],
            resources=[f"arn:{stack.partition}:ec2:{stack.region}::image/*"],
            conditions={
                "ArnEquals": templates,
                "Bool": {"ec2:IsLaunchTemplateResource": "true"},
            },
        ),
        iam.PolicyStatement(
            sid="TemplateVolumes",
            actions=["ec2:RunInstances"],
            resources=[f"{ec2_arn}:volume/*"],
            conditions={"ArnEquals": templates},
        ),
        iam.PolicyStatement(
            sid="TemplateNetwork",
            actions=["ec2:RunInstances"],
            resources=[
                f"{ec2_arn}:{kind}/*" for kind in ("subnet", "security-group", "network-interface")
            ],
            conditions={"ArnEquals": {**templates, "ec2:Vpc": _vpc_arn(scope, vpc)}},
        ),
        iam.PolicyStatement(
            sid="PassNodeRoles",
            actions=["iam:PassRole"],
            resources=[g.role.role_arn for g in groups],
            conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
    ]
    for statement in statements:
        grantee.grant_principal.add_to_principal_policy(statement)


def _ec2_arn(scope: Construct) -> str:
    stack = Stack.of(scope)
    return f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}"


def _vpc_arn(scope: Construct, vpc: ec2.IVpc) -> str:
    """``ec2:Vpc`` is compared as the VPC's ARN, not its id."""
    return f"{_ec2_arn(scope)}:vpc/{vpc.vpc_id}"


def grant_terminate_cluster_instances(
    grantee: iam.IGrantable, *, cluster_name: str, scope: Construct
) -> None:
    """Find and terminate this cluster's instances, and no one else's (power-save, teardown)."""
    principal = grantee.grant_principal
    principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="TerminateClusterInstances",
            actions=["ec2:TerminateInstances"],
            resources=[f"{_ec2_arn(scope)}:instance/*"],
            conditions={"StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": cluster_name}},
        )
    )
    principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="DescribeInstances", actions=["ec2:DescribeInstances"], resources=["*"]
        )
    )


def grant_power_saving(
    grantee: iam.IGrantable, *, cluster_name: str, vpc: ec2.IVpc, scope: Construct
) -> None:
    """What Slurm's resume/suspend programs need beyond the groups' launch rights
    (``grant_launch``): the fleet itself, the subnets it overrides, spot requests,
    tags at launch and the node name after, and the service-linked roles a first spot launch in
    an account creates."""
    grant_terminate_cluster_instances(grantee, cluster_name=cluster_name, scope=scope)
    ec2_arn = _ec2_arn(scope)
    iam_arn = f"arn:{Stack.of(scope).partition}:iam::{Stack.of(scope).account}"
    cluster_request_tag = {f"aws:RequestTag/{tags.CLUSTER}": cluster_name}
    statements = [
        iam.PolicyStatement(
            sid="CreateClusterFleets",
            actions=["ec2:CreateFleet"],
            resources=[f"{ec2_arn}:fleet/*"],
            conditions={"StringEquals": cluster_request_tag},
        ),
        iam.PolicyStatement(
            sid="FleetSubnets",
            actions=["ec2:CreateFleet"],
            resources=[f"{ec2_arn}:subnet/*"],
            conditions={"ArnEquals": {"ec2:Vpc": _vpc_arn(scope, vpc)}},
        ),
        # A spot launch's request carries only request tags, and neither the fleet nor the
        # launch template tags it; it is never launched alone, but with an instance that
        # SpotInstances* holds to a template, the spot market, the group's types and tags.
        iam.PolicyStatement(
            sid="SpotRequests",
            actions=["ec2:RunInstances"],
            resources=[f"{ec2_arn}:spot-instances-request/*"],
        ),
        iam.PolicyStatement(
            sid="TagAtLaunch",
            actions=["ec2:CreateTags"],
            resources=[
                f"{ec2_arn}:{kind}/*"
                for kind in (
                    "instance",
                    "volume",
                    "network-interface",
                    "fleet",
                    "spot-instances-request",
                )
            ],
            conditions={
                "StringEquals": {
                    "ec2:CreateAction": ["RunInstances", "CreateFleet"],
                    **cluster_request_tag,
                }
            },
        ),
        iam.PolicyStatement(
            sid="NameClusterNodes",
            actions=["ec2:CreateTags"],
            resources=[f"{ec2_arn}:instance/*"],
            conditions={
                "StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": cluster_name},
                "ForAllValues:StringEquals": {"aws:TagKeys": [tags.NODE, tags.INSTANCE_TYPE]},
            },
        ),
        iam.PolicyStatement(
            sid="SpotServiceLinkedRoles",
            actions=["iam:CreateServiceLinkedRole"],
            resources=[
                f"{iam_arn}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
                f"{iam_arn}:role/aws-service-role/ec2fleet.amazonaws.com/AWSServiceRoleForEC2Fleet",
            ],
            conditions={
                "StringEquals": {
                    "iam:AWSServiceName": ["spot.amazonaws.com", "ec2fleet.amazonaws.com"]
                }
            },
        ),
    ]
    for statement in statements:
        grantee.grant_principal.add_to_principal_policy(statement)
