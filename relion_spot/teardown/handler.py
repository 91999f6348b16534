"""CloudFormation custom resource: runs the sweep on stack delete, replies to CloudFormation."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any

import boto3

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
        _reply(event, context, "SUCCESS", physical_id, "", data)
    except TeardownIncomplete as error:
        log.error("%s", error)
        _reply(event, context, "FAILED", physical_id, str(error), {})
    except Exception as error:
        log.exception("teardown failed")
        _reply(event, context, "FAILED", physical_id, f"{type(error).__name__}: {error}", {})


def _reply(
    event: dict[str, Any],
    context: Any,
    status: str,
    physical_id: str,
    reason: str,
    data: dict[str, str],
) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": (reason or f"see log stream {context.log_stream_name}")[:3500],
            "PhysicalResourceId": physical_id,
            "StackId": event.get("StackId", ""),
            "RequestId": event.get("RequestId", ""),
            "LogicalResourceId": event.get("LogicalResourceId", ""),
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        log.info("CloudFormation reply %s: HTTP %s", status, response.status)
