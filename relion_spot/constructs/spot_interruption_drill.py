"""A real spot interruption on demand: an AWS FIS experiment template that sends the two-minute
notice to one running spot instance of this cluster's GPU partition, for ``relion-spot
selftest --interrupt``.

Scoped three ways: FIS picks its target by the cluster's and partition's tags, the role FIS
assumes may interrupt only instances carrying this cluster's tag, and the selftest starts the
experiment only while no GPU node but its own job's runs (anything else running on the cluster
is work a drill must not touch; relion_spot.selftest.cloud checks just before the start).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_fis as fis
from aws_cdk import aws_iam as iam
from constructs import Construct

from .. import tags
from ..doctor.checks import G_VT_SPOT_QUOTA

ACTION_ID = "aws:ec2:send-spot-instance-interruptions"
TARGET_TYPE = "aws:ec2:spot-instance"
NOTICE = "PT2M"
"""How long before the interruption the notice comes: EC2's own two minutes (the minimum)."""


class SpotInterruptionDrill(Construct):
    """The experiment template (``template_id``) and its role."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        partition: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(
                "fis.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description=f"Lets AWS FIS interrupt spot instances of cluster {cluster_name} only",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="InterruptThisClustersSpotInstances",
                actions=["ec2:SendSpotInstanceInterruptions"],
                resources=[stack.format_arn(service="ec2", resource="instance", resource_name="*")],
                conditions={"StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": cluster_name}},
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="FindTheTargetByTag",
                actions=["ec2:DescribeInstances"],
                resources=["*"],  # a Describe action authorizes no resource
            )
        )
        self.template = fis.CfnExperimentTemplate(
            self,
            "Template",
            description=f"relion-spot selftest: a spot interruption notice to one {partition} "
            f"node of {cluster_name}",
            role_arn=self.role.role_arn,
            targets={
                "Node": fis.CfnExperimentTemplate.ExperimentTemplateTargetProperty(
                    resource_type=TARGET_TYPE,
                    selection_mode="COUNT(1)",
                    resource_tags={tags.CLUSTER: cluster_name, tags.PARTITION: partition},
                    filters=[
                        fis.CfnExperimentTemplate.ExperimentTemplateTargetFilterProperty(
                            path="State.Name", values=["running"]
                        )
                    ],
                )
            },
            actions={
                "Interrupt": fis.CfnExperimentTemplate.ExperimentTemplateActionProperty(
                    action_id=ACTION_ID,
                    parameters={"durationBeforeInterruption": NOTICE},
                    targets={"SpotInstances": "Node"},
                )
            },
            # One notice to one instance ends by itself; what must not be touched is checked
            # before the start (the selftest refuses while other GPU nodes run). A standing
            # alarm would bill every month the cluster sleeps.
            stop_conditions=[
                fis.CfnExperimentTemplate.ExperimentTemplateStopConditionProperty(source="none")
            ],
            tags={tags.CLUSTER: cluster_name, "Name": f"{cluster_name}-spot-interruption"},
        )

    @property
    def template_id(self) -> str:
        return self.template.attr_id

    def grant_run(self, grantee: iam.IGrantable, *, cluster_name: str) -> None:
        """What ``relion-spot selftest --gpu --interrupt`` calls besides the lab's commands:
        read the G/VT spot quota and the cluster's instances, start this template's experiment
        (tagged with the cluster), watch only experiments carrying the cluster's tag, and stop
        an experiment."""
        stack = Stack.of(self)
        service, quota = G_VT_SPOT_QUOTA
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadTheGpuSpotQuota",
                actions=["servicequotas:GetServiceQuota"],
                resources=[
                    stack.format_arn(service="servicequotas", resource=service, resource_name=quota)
                ],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadTheQuotasDefault",
                actions=["servicequotas:GetAWSDefaultServiceQuota"],
                resources=["*"],  # authorizes no resource
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="FindTheClustersNodes",
                actions=["ec2:DescribeInstances"],
                resources=["*"],  # a Describe action authorizes no resource
                conditions={"StringEquals": {"ec2:Region": stack.region}},
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="StartTheSpotInterruptionDrill",
                actions=["fis:StartExperiment"],
                resources=[
                    stack.format_arn(
                        service="fis",
                        resource="experiment-template",
                        resource_name=self.template_id,
                    )
                ],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="TagTheDrillsExperiment",
                actions=["fis:StartExperiment", "fis:TagResource"],
                resources=[
                    stack.format_arn(service="fis", resource="experiment", resource_name="*")
                ],
                conditions={"StringEquals": {f"aws:RequestTag/{tags.CLUSTER}": cluster_name}},
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WatchTheDrill",
                actions=["fis:GetExperiment"],
                resources=[
                    stack.format_arn(service="fis", resource="experiment", resource_name="*")
                ],
                conditions={"StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": cluster_name}},
            )
        )
        # StopExperiment carries no condition key (IAM's action data): it is granted on every
        # experiment, and all it can do is end a fault early.
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="StopTheDrill",
                actions=["fis:StopExperiment"],
                resources=[
                    stack.format_arn(service="fis", resource="experiment", resource_name="*")
                ],
            )
        )
