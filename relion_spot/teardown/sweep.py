"""Find and terminate one cluster's instances, waiting until they are really gone."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .. import tags

log = logging.getLogger(__name__)

LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
TERMINATE_BATCH = 500


class TeardownIncomplete(RuntimeError):
    """Instances of the cluster were still alive when the time allowed ran out."""


@dataclass
class SweepResult:
    cluster_name: str
    terminated: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Instance id -> why EC2 refused to terminate it (e.g. termination protection)."""


def live_cluster_instances(ec2: Any, cluster_name: str) -> dict[str, str]:
    """Instance id -> state, for every not-yet-terminated instance tagged with the cluster."""
    found: dict[str, str] = {}
    paginator = ec2.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": f"tag:{tags.CLUSTER}", "Values": [cluster_name]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance["State"]["Name"]
    return found


def terminate_with_fallback(ec2: Any, instance_ids: list[str], result: SweepResult) -> None:
    """Terminate in batches; when EC2 refuses a batch, one by one, noting each refusal."""
    for start in range(0, len(instance_ids), TERMINATE_BATCH):
        batch = instance_ids[start : start + TERMINATE_BATCH]
        try:
            ec2.terminate_instances(InstanceIds=batch)
            _note_terminated(result, batch)
        except ClientError:
            # One protected or vanished instance fails the whole call: retry one by one so the
            # rest still go, and remember exactly which one refused and why.
            for instance_id in batch:
                try:
                    ec2.terminate_instances(InstanceIds=[instance_id])
                    _note_terminated(result, [instance_id])
                except ClientError as error:
                    err = error.response.get("Error", {})
                    result.refused[instance_id] = f"{err.get('Code')}: {err.get('Message')}"


def _note_terminated(result: SweepResult, ids: list[str]) -> None:
    for instance_id in ids:
        if instance_id not in result.terminated:
            result.terminated.append(instance_id)
        result.refused.pop(instance_id, None)


def terminate_cluster_instances(
    ec2: Any,
    cluster_name: str,
    *,
    seconds_allowed: float,
    poll_seconds: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SweepResult:
    """Terminate the cluster's instances and wait until none is left alive.

    Idempotent: a retry after a partial sweep just finds fewer instances. Raises
    ``TeardownIncomplete`` naming every surviving instance when ``seconds_allowed`` runs out.
    """
    deadline = clock() + seconds_allowed
    result = SweepResult(cluster_name=cluster_name)
    while True:
        alive = live_cluster_instances(ec2, cluster_name)
        if not alive:
            log.info(
                "cluster %s: no instances left (%d terminated)",
                cluster_name,
                len(result.terminated),
            )
            return result
        to_terminate = sorted(i for i, state in alive.items() if state != "shutting-down")
        if to_terminate:
            log.info("cluster %s: terminating %s", cluster_name, ", ".join(to_terminate))
            terminate_with_fallback(ec2, to_terminate, result)
        if clock() + poll_seconds > deadline:
            raise TeardownIncomplete(_survivors_message(cluster_name, alive, result))
        sleep(poll_seconds)


def _survivors_message(cluster_name: str, alive: dict[str, str], result: SweepResult) -> str:
    parts = []
    for instance_id, state in sorted(alive.items()):
        why = result.refused.get(instance_id)
        parts.append(f"{instance_id} ({state}{'; ' + why if why else ''})")
    return (
        f"{len(alive)} instance(s) of cluster {cluster_name} still alive when teardown ran out "
        f"of time: {', '.join(parts)}. Terminate them (aws ec2 terminate-instances), then retry "
        "the stack delete."
    )
