"""A real spot interruption on demand: an AWS FIS experiment template that sends the two-minute
notice to one running spot instance of this cluster's GPU partition, for ``relion-spot
selftest --interrupt``.

Scoped three ways: FIS picks its target by the cluster's and partition's tags, the role FIS
assumes may interrupt only instances carrying this cluster's tag, and a CloudWatch alarm stops
the experiment when the cluster runs more GPU nodes than the selftest's job and its replacement
(anything else running on the cluster is work a drill must not touch).
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_fis as fis
from aws_cdk import aws_iam as iam
from constructs import Construct

from .. import tags
from ..cost import nodes
from ..doctor.checks import G_VT_SPOT_QUOTA

ACTION_ID = "aws:ec2:send-spot-instance-interruptions"
TARGET_TYPE = "aws:ec2:spot-instance"
NOTICE = "PT2M"
"""How long before the interruption the notice comes: EC2's own two minutes (the minimum)."""
DRILL_NODES = 2
"""The selftest's node and, for a moment, its replacement: more running means other work."""


class SpotInterruptionDrill(Construct):
    """The experiment template (``template_id``), its role and its stop condition."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        partition: str,
        instance_types: tuple[str, ...],
        metric_namespace: str,
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
        running = {
            f"n{index}": cw.Metric(
                namespace=metric_namespace,
                metric_name=nodes.NODES_RUNNING_METRIC,
                dimensions_map=dict(
                    zip(nodes.DIMENSIONS, (cluster_name, instance_type, "spot"), strict=True)
                ),
                statistic="Maximum",
                period=Duration.minutes(5),
            )
            for index, instance_type in enumerate(instance_types)
        }
        self.stop_alarm = cw.Alarm(
            self,
            "TooManyNodes",
            alarm_description=(
                f"Stops a spot interruption drill on {cluster_name}: more than {DRILL_NODES} "
                f"{partition} nodes run, so the cluster carries work besides the selftest"
            ),
            metric=cw.MathExpression(
                expression=f"SUM([{','.join(running)}])",
                using_metrics=running,
                period=Duration.minutes(5),
                label="GPU nodes running",
            ),
            threshold=DRILL_NODES,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
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
            stop_conditions=[
                fis.CfnExperimentTemplate.ExperimentTemplateStopConditionProperty(
                    source="aws:cloudwatch:alarm", value=self.stop_alarm.alarm_arn
                )
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
