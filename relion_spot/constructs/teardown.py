"""Terminates a cluster's Slurm-launched instances on stack delete, before its network goes."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from .lambda_code import LAMBDA_RUNTIME, package_code
from .node_group import grant_terminate_cluster_instances


class ClusterTeardown(Construct):
    """A custom resource whose delete sweeps the cluster's instances.

    Ordering is the point: ``run_before_deleting`` makes CloudFormation delete this resource
    (and so run the sweep) before the security groups, launch templates and roles the instances
    use; ``stop_launches_first`` makes the controller go before it, so nothing launches anew
    behind the sweep. Subnets and mount targets live in stacks this one depends on, which
    CloudFormation deletes only after this stack is gone.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.role = role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Terminates the instances of cluster {cluster_name} on stack delete",
        )
        log_group.grant_write(role)
        grant_terminate_cluster_instances(role, cluster_name=cluster_name, scope=self)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=LAMBDA_RUNTIME,
            code=package_code("teardown"),
            handler="relion_spot.teardown.handler.on_event",
            timeout=Duration.minutes(15),
            memory_size=256,
            role=role,
            log_group=log_group,
            description=f"Terminates cluster {cluster_name}'s instances on stack delete",
        )
        self.resource = CustomResource(
            self,
            "Sweep",
            service_token=self.function.function_arn,
            resource_type="Custom::ClusterTeardown",
            properties={"ClusterName": cluster_name},
        )

    def run_before_deleting(self, *resources: IConstruct) -> None:
        for resource in resources:
            self.resource.node.add_dependency(resource)

    def stop_launches_first(self, launcher: IConstruct) -> None:
        launcher.node.add_dependency(self.resource)
