"""CloudFormation custom resource: runs the sweep on stack delete, replies to CloudFormation."""

from __future__ import annotations

import logging
import os
from typing import Any

import boto3

from ..cfn_reply import reply
from .sweep import TeardownIncomplete, terminate_cluster_instances

log = logging.getLogger()
log.setLevel(logging.INFO)

REPLY_MARGIN_SECONDS = 20.0
"""Kept back from the Lambda timeout so a FAILED reply always reaches CloudFormation; a Lambda
killed mid-wait would leave the stack hanging for an hour instead."""


def on_event(event: dict[str, Any], context: Any) -> None:
    props = event.get("ResourceProperties", {})
    cluster_name = props.get("ClusterName", "")
    physical_id = event.get("PhysicalResourceId") or f"teardown-{cluster_name}"
    try:
        if not cluster_name:
            raise ValueError("ResourceProperties.ClusterName is missing")
        data: dict[str, str] = {}
        if event["RequestType"] == "Delete":
            seconds = context.get_remaining_time_in_millis() / 1000.0 - REPLY_MARGIN_SECONDS
            ec2 = boto3.client("ec2", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_EC2"))
            result = terminate_cluster_instances(ec2, cluster_name, seconds_allowed=seconds)
            data = {"Terminated": ",".join(result.terminated)}
        reply(event, context, "SUCCESS", physical_id, "", data)
    except TeardownIncomplete as error:
        log.error("%s", error)
        reply(event, context, "FAILED", physical_id, str(error), {})
    except Exception as error:
        log.exception("teardown failed")
        reply(event, context, "FAILED", physical_id, f"{type(error).__name__}: {error}", {})
