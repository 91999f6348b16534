"""Wakes a sleeping controller for whatever waits in its intake queue, whoever sent it."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..controller_wake import handler
from .lambda_code import own_function
from .slurm_controller import SlurmController

CHECK_EVERY = Duration.minutes(5)
"""How long a message sent without a wake waits at most for the controller to be asked up (plus
SQS's approximate counts settling and the controller's start). 8,640 short runs a month."""


class ControllerWake(Construct):
    """A schedule -> a function that counts the intake queue's messages (GetQueueAttributes) and,
    with any there, sets the controller's service to one task (relion_spot.controller_wake).
    ``relion-spot submit`` wakes the controller at once; this catches every other sender."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        controller: SlurmController,
        queue: sqs.IQueue,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role, self.function = own_function(
            self,
            subpackage="controller_wake",
            handler="handler.on_schedule",
            role_description=f"Wakes {controller.service_name} for messages in its intake queue",
            description=f"Wakes {controller.service_name} for anything in its intake queue",
            log_retention=log_retention,
            timeout=Duration.seconds(30),
            environment={
                handler.QUEUE_URL_ENV: queue.queue_url,
                handler.CLUSTER_ENV: controller.cluster_name,
                handler.SERVICE_ENV: controller.service_name,
            },
        )
        controller.grant_scale(self.role)
        queue.grant(self.role, "sqs:GetQueueAttributes")
        self.rule = events.Rule(
            self,
            "Schedule",
            schedule=events.Schedule.rate(CHECK_EVERY),
            description=f"Is anything waiting for {controller.service_name} in its intake queue?",
            # EventBridge does not retry a delivery: the next run comes in five minutes (Lambda's
            # own retries of a failed run are harmless, the wake being idempotent).
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
        # Made after the service and removed before it: no run scales a service being deleted.
        self.node.add_dependency(controller.service)
