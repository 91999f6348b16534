"""Terminates a cluster's Slurm-launched instances on stack delete, before its network goes."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from .lambda_code import own_function
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
        self.role, self.function = own_function(
            self,
            subpackage="teardown",
            handler="handler.on_event",
            role_description=f"Terminates the instances of cluster {cluster_name} on stack delete",
            description=f"Terminates cluster {cluster_name}'s instances on stack delete",
            log_retention=log_retention,
            timeout=Duration.minutes(15),
            memory_size=256,
        )
        grant_terminate_cluster_instances(self.role, cluster_name=cluster_name, scope=self)
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
