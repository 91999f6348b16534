"""Keeps the Slurm controller running when Fargate Spot has no capacity for it."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from constructs import Construct

from ..controller_capacity import fallback, handler
from .lambda_code import own_function
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
        self.role, self.function = own_function(
            self,
            subpackage="controller_capacity",
            handler="handler.on_event",
            role_description=(
                f"Moves {controller.service_name} to on-demand Fargate when Spot has none"
            ),
            description=f"On-demand Fargate for {controller.service_name} while Spot has none",
            log_retention=log_retention,
            timeout=Duration.seconds(30),
            environment={
                handler.CLUSTER_ENV: controller.cluster_name,
                handler.SERVICE_ENV: controller.service_name,
            },
        )
        controller.grant_scale(self.role)
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
