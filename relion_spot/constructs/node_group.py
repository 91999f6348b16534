"""A Slurm partition's CLOUD nodes: what an instance is launched with, never the instances.

Instances are started by the controller's resume program (EC2 CreateFleet) when jobs wait and
terminated by its suspend program when idle, so the group costs nothing while the queue is
empty. This construct owns the launch template, the node role and the IAM that lets exactly this
cluster's controller launch and terminate exactly this cluster's instances.
"""

from __future__ import annotations

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
LAUNCH_RESOURCE_KINDS = (
    "volume",
    "network-interface",
    "subnet",
    "security-group",
    "spot-instances-request",
)
"""Resources a launch creates or uses besides the instance and image; IAM names them by
wildcard (their ids do not exist before the launch) and holds them to the launch template."""
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
        """A node may set and clear the job tags on this cluster's instances, and nothing else.

        Narrower than "only itself" would need the policy variable ``${ec2:SourceInstanceARN}``
        as a Resource, which CloudFormation's validators reject; the blast radius is one job's
        labels on a sibling node of the same cluster.
        """
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ec2:CreateTags", "ec2:DeleteTags"],
                resources=[f"{_ec2_arn(self)}:instance/*"],
                conditions={
                    "StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": self.cluster_name},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(tags.JOB_TAG_KEYS)},
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

    def grant_launch(self, grantee: iam.IGrantable) -> None:
        """Let the controller's resume program launch this group's nodes, and nothing else.

        Launching works only through this group's launch template and only with this cluster's
        tag on the request (terminating is ``grant_terminate_cluster_instances``).
        """
        stack = Stack.of(self)
        ec2_arn = _ec2_arn(self)
        launch_template_condition = {"ArnLike": {"ec2:LaunchTemplate": self.launch_template_arn}}
        principal = grantee.grant_principal
        statements = [
            iam.PolicyStatement(
                sid=f"LaunchWithTemplate{self.partition.title()}",
                actions=["ec2:RunInstances", "ec2:CreateFleet"],
                resources=[self.launch_template_arn],
            ),
            iam.PolicyStatement(
                sid=f"LaunchTaggedInstances{self.partition.title()}",
                actions=["ec2:RunInstances", "ec2:CreateFleet"],
                resources=[f"{ec2_arn}:instance/*"],
                conditions={
                    **launch_template_condition,
                    "StringEquals": {
                        f"aws:RequestTag/{tags.CLUSTER}": self.cluster_name,
                        # Spot only: enforced here rather than by market options in the launch
                        # template, which EC2 Fleet-family APIs (ASG, EKS, Fleet) refuse.
                        "ec2:InstanceMarketType": "spot",
                    },
                },
            ),
            iam.PolicyStatement(
                sid=f"LaunchResources{self.partition.title()}",
                actions=["ec2:RunInstances", "ec2:CreateFleet"],
                resources=[f"{ec2_arn}:{kind}/*" for kind in LAUNCH_RESOURCE_KINDS]
                + [f"arn:{stack.partition}:ec2:{stack.region}::image/*"],
                conditions=launch_template_condition,
            ),
            iam.PolicyStatement(
                sid=f"CreateTaggedFleet{self.partition.title()}",
                actions=["ec2:CreateFleet"],
                resources=[f"{ec2_arn}:fleet/*"],
                conditions={"StringEquals": {f"aws:RequestTag/{tags.CLUSTER}": self.cluster_name}},
            ),
            iam.PolicyStatement(
                sid=f"PassNodeRole{self.partition.title()}",
                actions=["iam:PassRole"],
                resources=[self.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            ),
        ]
        for statement in statements:
            principal.add_to_principal_policy(statement)


def _ec2_arn(scope: Construct) -> str:
    stack = Stack.of(scope)
    return f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}"


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
            sid="DescribeInstances",
            actions=["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"],
            resources=["*"],
        )
    )


def grant_power_saving(grantee: iam.IGrantable, *, cluster_name: str, scope: Construct) -> None:
    """What Slurm's resume/suspend programs need beyond each group's launch rights."""
    grant_terminate_cluster_instances(grantee, cluster_name=cluster_name, scope=scope)
    ec2_arn = _ec2_arn(scope)
    principal = grantee.grant_principal
    principal.add_to_principal_policy(
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
            conditions={"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"]}},
        )
    )
    principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="RetagClusterInstances",
            actions=["ec2:CreateTags", "ec2:DeleteTags"],
            resources=[f"{ec2_arn}:instance/*"],
            conditions={"StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": cluster_name}},
        )
    )
    principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="DescribeForLaunching",
            actions=[
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeSubnets",
                "ec2:DescribeSpotPriceHistory",
            ],
            resources=["*"],
        )
    )
    principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="SpotServiceLinkedRoles",
            actions=["iam:CreateServiceLinkedRole"],
            resources=["*"],
            conditions={
                "StringEquals": {
                    "iam:AWSServiceName": ["spot.amazonaws.com", "ec2fleet.amazonaws.com"]
                }
            },
        )
    )
