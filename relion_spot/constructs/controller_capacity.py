"""Keeps the Slurm controller running when Fargate Spot has no capacity for it."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from ..controller_capacity import fallback, handler
from .lambda_code import LAMBDA_RUNTIME, package_code
from .slurm_controller import SlurmController


class ControllerCapacityFallback(Construct):
    """ECS's placement failure of the controller's Fargate Spot task -> the service on on-demand
    Fargate. ECS itself never moves a service between capacity providers (see
    relion_spot.controller_capacity); the controller goes back to Spot when it next sleeps."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        controller: SlurmController,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Moves {controller.service_name} to on-demand Fargate when Spot has none",
        )
        log_group.grant_write(self.role)
        controller.grant_scale(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=LAMBDA_RUNTIME,
            code=package_code("controller_capacity"),
            handler="relion_spot.controller_capacity.handler.on_event",
            timeout=Duration.seconds(30),
            memory_size=128,
            role=self.role,
            log_group=log_group,
            environment={
                handler.CLUSTER_ENV: controller.cluster_name,
                handler.SERVICE_ENV: controller.service_name,
            },
            description=f"On-demand Fargate for {controller.service_name} while Spot has none",
        )
        self.rule = events.Rule(
            self,
            "PlacementFailure",
            description=f"Fargate has no capacity for {controller.service_name}'s task",
            event_pattern=events.EventPattern(
                source=["aws.ecs"],
                detail_type=["ECS Service Action"],
                resources=[controller.service.service_arn],
                detail={
                    "eventName": [fallback.PLACEMENT_FAILURE],
                    "reason": [fallback.FARGATE_CAPACITY],
                },
            ),
            targets=[targets.LambdaFunction(self.function, retry_attempts=2)],
        )
