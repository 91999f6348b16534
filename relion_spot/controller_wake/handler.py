"""Lambda entry, on a schedule: anything in the intake queue -> the controller's service to 1."""

from __future__ import annotations

import logging
import os
from typing import Any

from .wake import waiting_submissions, wake_controller

QUEUE_URL_ENV = "RELION_SPOT_INTAKE_QUEUE_URL"
CLUSTER_ENV = "RELION_SPOT_ECS_CLUSTER"
SERVICE_ENV = "RELION_SPOT_ECS_SERVICE"
NOTHING_WAITING = "nothing waiting"
AWAKE = "awake"
WOKEN = "woken"

log = logging.getLogger("relion_spot.controller_wake")
log.setLevel(logging.INFO)


def on_schedule(
    event: dict[str, Any], context: Any = None, *, sqs: Any = None, ecs: Any = None
) -> dict[str, Any]:
    queue_url = os.environ[QUEUE_URL_ENV]
    cluster, service = os.environ[CLUSTER_ENV], os.environ[SERVICE_ENV]
    if sqs is None or ecs is None:
        import boto3

        sqs, ecs = sqs or boto3.client("sqs"), ecs or boto3.client("ecs")
    waiting = waiting_submissions(sqs, queue_url)
    if not waiting:
        return {"outcome": NOTHING_WAITING, "waiting": 0}
    if wake_controller(ecs, cluster, service):
        log.info("%s/%s: %d message(s) in the intake queue: woken", cluster, service, waiting)
        return {"outcome": WOKEN, "waiting": waiting}
    return {"outcome": AWAKE, "waiting": waiting}
