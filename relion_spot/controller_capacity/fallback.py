"""What the fallback does to the controller's ECS service (the ECS client is passed in)."""

from __future__ import annotations

from typing import Any

SPOT = "FARGATE_SPOT"
ON_DEMAND = "FARGATE"
PLACEMENT_FAILURE = "SERVICE_TASK_PLACEMENT_FAILURE"
FARGATE_CAPACITY = "RESOURCE:FARGATE"
"""The reason ECS gives when Fargate (Spot) has no capacity for the task."""

SWITCHED = "switched-to-on-demand"
ALREADY_ON_DEMAND = "already-on-demand"
ASLEEP = "asleep"
MISSING = "missing"


def strategy(provider: str) -> list[dict[str, Any]]:
    """A one-provider strategy, as CreateService/UpdateService take it."""
    return [{"capacityProvider": provider, "weight": 1}]


def providers(service: dict[str, Any]) -> list[str]:
    return [item["capacityProvider"] for item in service.get("capacityProviderStrategy") or []]


def fall_back(ecs: Any, *, cluster: str, service: str) -> str:
    """Put the service on on-demand Fargate (a new deployment) unless it is there already or
    asleep (0 tasks wanted: the wake will try Spot); what was done."""
    described = ecs.describe_services(cluster=cluster, services=[service]).get("services") or []
    if not described:
        return MISSING
    current = described[0]
    if providers(current) == [ON_DEMAND]:
        return ALREADY_ON_DEMAND
    if int(current.get("desiredCount", 0)) == 0:
        return ASLEEP
    ecs.update_service(
        cluster=cluster,
        service=service,
        capacityProviderStrategy=strategy(ON_DEMAND),
        forceNewDeployment=True,
    )
    return SWITCHED


def sleep_arguments(provider: str) -> dict[str, Any]:
    """UpdateService arguments that put the service to sleep back on ``provider`` (the one the
    deployment chose); empty when no provider is named. A strategy change needs a new
    deployment, which costs nothing at 0 tasks."""
    if not provider:
        return {}
    return {"capacityProviderStrategy": strategy(provider), "forceNewDeployment": True}
