"""Lambda entry: an ECS placement failure of the controller's service -> on-demand Fargate."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .fallback import FARGATE_CAPACITY, PLACEMENT_FAILURE, fall_back

CLUSTER_ENV = "RELION_SPOT_ECS_CLUSTER"
SERVICE_ENV = "RELION_SPOT_ECS_SERVICE"
IGNORED = "ignored"

log = logging.getLogger("relion_spot.controller_capacity")
log.setLevel(logging.INFO)


def on_event(event: dict[str, Any], context: Any = None, *, ecs: Any = None) -> dict[str, str]:
    cluster, service = os.environ[CLUSTER_ENV], os.environ[SERVICE_ENV]
    detail = event.get("detail") or {}
    if detail.get("eventName") != PLACEMENT_FAILURE or detail.get("reason") != FARGATE_CAPACITY:
        log.info("not a Fargate capacity failure: %s", json.dumps(detail)[:500])
        return {"outcome": IGNORED}
    if ecs is None:
        import boto3

        ecs = boto3.client("ecs")
    outcome = fall_back(ecs, cluster=cluster, service=service)
    log.info("%s/%s: Fargate Spot had no capacity: %s", cluster, service, outcome)
    return {"outcome": outcome}
