"""Wake a sleeping controller: its ECS service back to one task (see relion_spot.slurm.idle).

Called after a submission is queued. Idempotent and cheap: a service already at 1 is left alone.
slurmctld comes back on the state it saved to EFS, and the drainer takes the submission."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


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
