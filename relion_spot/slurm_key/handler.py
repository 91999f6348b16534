"""CloudFormation custom resource: the cluster's Slurm key parameter.

Create and Update store a new key under the parameter name unless one is there (never
overwriting: see ``parameter.ensure``); the physical id is the parameter's name, so a changed
name is a replacement, and CloudFormation's later Delete of the old id removes the old
parameter. Delete removes the parameter the physical id names; one already gone is success. A
Create that fails replies with a physical id naming no parameter, so the Delete of its rollback
removes nothing it did not make. The reply's Data says what was done, never the key.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3

from ..cfn_reply import reply
from .parameter import delete, ensure, is_key_parameter

log = logging.getLogger()
log.setLevel(logging.INFO)

NAME_PROPERTY = "ParameterName"
NOT_CREATED = "slurm-key-not-created"
"""The physical id of a Create that failed: no parameter, nothing for its Delete to remove."""
NOTHING = "nothing"
"""A Delete's outcome when its resource never made a parameter."""


def on_event(event: dict[str, Any], context: Any, ssm: Any = None) -> None:
    name = event.get("ResourceProperties", {}).get(NAME_PROPERTY, "")
    request = event.get("RequestType", "")
    physical_id = event.get("PhysicalResourceId") or NOT_CREATED
    try:
        client = ssm or boto3.client("ssm")
        if request in ("Create", "Update"):
            if not name:
                raise ValueError(f"ResourceProperties.{NAME_PROPERTY} is missing")
            outcome = ensure(client, name)
            physical_id = name
        elif request == "Delete":
            # What this resource made is its physical id, whatever its properties say now.
            outcome = delete(client, physical_id) if is_key_parameter(physical_id) else NOTHING
        else:
            raise ValueError(f"RequestType {request!r} is not Create, Update or Delete")
    except Exception as error:
        # Any failure still replies: without one, CloudFormation waits an hour.
        log.exception("%s %s failed", request, name or physical_id)
        reply(event, context, "FAILED", physical_id, f"{type(error).__name__}: {error}")
        return
    log.info("%s %s: %s", request, physical_id, outcome)
    reply(event, context, "SUCCESS", physical_id, "", {"Outcome": outcome})
