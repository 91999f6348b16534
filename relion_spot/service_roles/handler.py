"""CloudFormation custom resource: make sure an AWS service's service-linked role exists.

A new account has no ``AWSServiceRoleForECS`` until something creates it, and an ECS cluster with
capacity providers that CloudFormation creates before then fails. Create and Update ask IAM for
the role and take "has been taken" (it exists already) as success. Delete leaves it: the account's
other clusters use it, and IAM refuses to delete a service-linked role still in use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from ..cfn_reply import reply

log = logging.getLogger()
log.setLevel(logging.INFO)

SERVICE_PROPERTY = "AWSServiceName"
SETTLE_SECONDS = 10.0
"""A role IAM has just created takes a few seconds to be usable by the service."""


def ensure(iam: Any, service: str, *, sleep: Callable[[float], None] = time.sleep) -> str:
    """Create ``service``'s service-linked role unless it exists: "created" or "existed"."""
    try:
        iam.create_service_linked_role(AWSServiceName=service)
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "InvalidInput" and "has been taken" in error.get("Message", ""):
            return "existed"
        raise
    sleep(SETTLE_SECONDS)
    return "created"


def on_event(event: dict[str, Any], context: Any, iam: Any = None) -> None:
    service = event.get("ResourceProperties", {}).get(SERVICE_PROPERTY, "")
    physical_id = event.get("PhysicalResourceId") or f"service-linked-role-{service}"
    try:
        if not service:
            raise ValueError(f"ResourceProperties.{SERVICE_PROPERTY} is missing")
        data: dict[str, str] = {}
        if event["RequestType"] in ("Create", "Update"):
            outcome = ensure(iam or boto3.client("iam"), service)
            log.info("service-linked role of %s: %s", service, outcome)
            data = {"Outcome": outcome}
        reply(event, context, "SUCCESS", physical_id, "", data)
    except (ClientError, BotoCoreError, ValueError) as error:
        log.error("service-linked role of %s: %s", service, error)
        reply(event, context, "FAILED", physical_id, f"{type(error).__name__}: {error}")
