"""Wake a sleeping controller, and count what waits for it in the intake queue.

Idempotent and cheap: a service already at 1 is left alone. slurmctld comes back on the state it
saved to EFS, and the drainer takes the submission."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

QUEUE_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
"""What counts as waiting: messages to receive, and messages received but not yet deleted (a
drainer that died holding one gives it back). Delayed messages are not yet anyone's to take."""


def waiting_submissions(sqs: Any, queue_url: str) -> int:
    """How many messages the intake queue holds for the controller (SQS's approximate counts)."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=list(QUEUE_ATTRIBUTES)
    )["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in QUEUE_ATTRIBUTES)


def wake_controller(ecs: Any, cluster: str, service: str) -> bool:
    """Set the service's desired count to 1 if it is 0; True if it had to be woken."""
    found = ecs.describe_services(cluster=cluster, services=[service]).get("services", [])
    if not found:
        raise LookupError(f"ECS service {service} not found in cluster {cluster}")
    if int(found[0].get("desiredCount", 0)) >= 1:
        return False
    ecs.update_service(cluster=cluster, service=service, desiredCount=1)
    log.info("controller %s was asleep: waking it", service)
    return True
