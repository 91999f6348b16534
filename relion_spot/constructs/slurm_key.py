"""The cluster's auth/slurm key: an SSM SecureString its own custom resource makes and deletes."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from ..slurm_key.handler import NAME_PROPERTY
from ..slurm_key.parameter import parameter_name
from .lambda_code import own_function

REMOVAL_POLICY = RemovalPolicy.DESTROY
"""The key goes with its cluster's stack: it is worth nothing without the cluster, and a key
left behind would be adopted by the next stack of that name rather than made anew."""


class SlurmKey(Construct):
    """A SecureString parameter (Standard tier, AWS managed key ``aws/ssm``: free) holding the
    key slurmctld and every slurmd of ``cluster_name`` share (relion_spot.slurm_key).

    The key policy of ``aws/ssm`` lets every principal of the account use it through Parameter
    Store, so readers need ``ssm:GetParameter`` on this one parameter and no KMS permission.
    Nothing refers to the parameter by a CloudFormation reference (its ARN is known before it
    exists), so what reads it at start must be ordered after it: ``required_by``.
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
        self.parameter_name = parameter_name(cluster_name)
        self.parameter_arn = Stack.of(self).format_arn(
            service="ssm",
            resource="parameter",
            resource_name=self.parameter_name.removeprefix("/"),
        )
        self.role, self.function = own_function(
            self,
            subpackage="slurm_key",
            handler="handler.on_event",
            role_description=f"Makes and deletes the Slurm key parameter of cluster {cluster_name}",
            description=f"Makes and deletes the Slurm key parameter of cluster {cluster_name}",
            log_retention=log_retention,
            timeout=Duration.minutes(1),
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ThisClustersSlurmKeyOnly",
                actions=["ssm:PutParameter", "ssm:DeleteParameter"],
                resources=[self.parameter_arn],
            )
        )
        self.resource = CustomResource(
            self,
            "Parameter",
            service_token=self.function.function_arn,
            resource_type="Custom::SlurmKey",
            properties={NAME_PROPERTY: self.parameter_name},
            removal_policy=REMOVAL_POLICY,
        )

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """Read (and decrypt) this key, no other parameter."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["ssm:GetParameter"], resources=[self.parameter_arn])
        )

    def required_by(self, *resources: IConstruct) -> None:
        """Create ``resources`` after the key exists, and delete them before it goes."""
        for resource in resources:
            resource.node.add_dependency(self.resource)
