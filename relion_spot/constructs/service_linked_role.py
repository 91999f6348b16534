"""An AWS service's service-linked role, created by the stack if the account has none yet."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from ..service_roles.handler import SERVICE_PROPERTY
from .lambda_code import own_function

ROLE_NAMES = {"ecs.amazonaws.com": "AWSServiceRoleForECS"}
"""The name IAM gives each service's service-linked role (fixed by the service)."""


class ServiceLinkedRole(Construct):
    """Ensures ``service``'s service-linked role exists before the resources that need it
    (``required_by``); never deletes it (see relion_spot.service_roles.handler)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role, self.function = own_function(
            self,
            subpackage="service_roles",
            handler="handler.on_event",
            role_description=f"Creates the service-linked role of {service} if missing",
            description=f"Creates the service-linked role of {service} if the account has none",
            log_retention=log_retention,
            timeout=Duration.minutes(2),
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="CreateThisServiceLinkedRole",
                actions=["iam:CreateServiceLinkedRole"],
                resources=[
                    f"arn:{stack.partition}:iam::{stack.account}:role/aws-service-role/"
                    f"{service}/{ROLE_NAMES[service]}"
                ],
                conditions={"StringEquals": {"iam:AWSServiceName": service}},
            )
        )
        self.resource = CustomResource(
            self,
            "Ensure",
            service_token=self.function.function_arn,
            resource_type="Custom::ServiceLinkedRole",
            properties={SERVICE_PROPERTY: service},
        )

    def required_by(self, *resources: IConstruct) -> None:
        for resource in resources:
            resource.node.add_dependency(self.resource)
