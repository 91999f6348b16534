"""The reply a CloudFormation custom resource's function owes CloudFormation (stdlib only, so
every function can ship it): without one, the stack waits an hour and fails."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger(__name__)


def reply(
    event: dict[str, Any],
    context: Any,
    status: str,
    physical_id: str,
    reason: str = "",
    data: dict[str, str] | None = None,
) -> None:
    """PUT ``status`` (SUCCESS or FAILED) to the request's pre-signed response URL."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": (reason or f"see log stream {context.log_stream_name}")[:3500],
            "PhysicalResourceId": physical_id,
            "StackId": event.get("StackId", ""),
            "RequestId": event.get("RequestId", ""),
            "LogicalResourceId": event.get("LogicalResourceId", ""),
            "Data": data or {},
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
