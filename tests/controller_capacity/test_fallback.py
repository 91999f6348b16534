"""The controller through a Fargate Spot shortage, against moto's ECS: the placement failure
ECS reports puts the service on on-demand Fargate (the Lambda handler, its own boto3 client),
the controller's sleep puts it back on Spot, and the next wake tries Spot again."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from relion_spot.controller_capacity import fallback, handler
from relion_spot.controller_wake.wake import wake_controller
from relion_spot.powersave.slurm import CommandResult
from relion_spot.slurm import idle
from tests.fakes import FakeClock
from tests.slurm.test_idle import nodes_json

REGION = "us-east-1"
CLUSTER, SERVICE = "lab-gpu1", "lab-gpu1-controller"
SERVICE_ARN = f"arn:aws:ecs:{REGION}:123456789012:service/{CLUSTER}/{SERVICE}"


def _event(reason: str = fallback.FARGATE_CAPACITY, name: str = fallback.PLACEMENT_FAILURE) -> dict:
    """An "ECS Service Action" event as EventBridge delivers it."""
    return {
        "version": "0",
        "detail-type": "ECS Service Action",
        "source": "aws.ecs",
        "region": REGION,
        "resources": [SERVICE_ARN],
        "detail": {
            "eventType": "WARN",
            "eventName": name,
            "clusterArn": f"arn:aws:ecs:{REGION}:123456789012:cluster/{CLUSTER}",
            "capacityProviderArns": [
                f"arn:aws:ecs:{REGION}:123456789012:capacity-provider/FARGATE_SPOT"
            ],
            "reason": reason,
            "createdAt": "2026-11-30T02:00:00.000Z",
        },
    }


@pytest.fixture
def ecs(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(handler.CLUSTER_ENV, CLUSTER)
    monkeypatch.setenv(handler.SERVICE_ENV, SERVICE)
    client = boto3.client("ecs", region_name=REGION)
    client.create_cluster(
        clusterName=CLUSTER, capacityProviders=[fallback.ON_DEMAND, fallback.SPOT]
    )
    client.register_task_definition(
        family="ctl", containerDefinitions=[{"name": "slurmctld", "image": "x", "memory": 512}]
    )
    spot = fallback.strategy(fallback.SPOT)
    client.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition="ctl",
                          desiredCount=1, capacityProviderStrategy=spot)  # fmt: skip
    # moto keeps a strategy only from UpdateService; the deployed service has it from creation.
    client.update_service(cluster=CLUSTER, service=SERVICE, capacityProviderStrategy=spot,
                          forceNewDeployment=True)  # fmt: skip
    return client


def _service(ecs: Any) -> dict[str, Any]:
    return ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]


def test_a_spot_shortage_moves_the_controller_to_on_demand_once(ecs: Any) -> None:
    assert fallback.providers(_service(ecs)) == [fallback.SPOT]
    assert handler.on_event(_event()) == {"outcome": fallback.SWITCHED}
    service = _service(ecs)
    assert fallback.providers(service) == [fallback.ON_DEMAND]
    assert service["desiredCount"] == 1
    assert handler.on_event(_event()) == {"outcome": fallback.ALREADY_ON_DEMAND}


@pytest.mark.parametrize(
    "event",
    [_event(reason="RESOURCE:ENI"), _event(name="SERVICE_STEADY_STATE")],
    ids=["other-reason", "other-event"],
)
def test_other_service_events_change_nothing(ecs: Any, event: dict) -> None:
    assert handler.on_event(event) == {"outcome": handler.IGNORED}
    assert fallback.providers(_service(ecs)) == [fallback.SPOT]


def test_sleep_goes_back_to_spot_and_the_wake_tries_spot_again(ecs: Any) -> None:
    handler.on_event(_event())
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="intake")["QueueUrl"]
    settings = idle.IdleSettings.from_env(
        {
            idle.CLUSTER_ENV: CLUSTER,
            idle.SERVICE_ENV: SERVICE,
            idle.IDLE_SECONDS_ENV: "60",
            idle.QUEUE_URL_ENV: url,
            idle.CAPACITY_PROVIDER_ENV: fallback.SPOT,
        }
    )
    nothing_to_do = {
        "squeue": CommandResult(0, ""),
        "scontrol": CommandResult(0, nodes_json(("gpu-1", "IDLE+CLOUD+POWERED_DOWN", ""))),
    }
    clock = FakeClock()
    assert idle.watch(settings, ecs=ecs, sqs=sqs, runner=lambda argv: nothing_to_do[argv[0]],
                      clock=clock, sleep=clock.sleep, rounds=20)  # fmt: skip
    asleep = _service(ecs)
    assert (asleep["desiredCount"], fallback.providers(asleep)) == (0, [fallback.SPOT])
    # A placement failure reported while it sleeps (a task stopping) leaves Spot for the wake.
    assert handler.on_event(_event()) == {"outcome": fallback.ASLEEP}
    assert wake_controller(ecs, CLUSTER, SERVICE)
    awake = _service(ecs)
    assert (awake["desiredCount"], fallback.providers(awake)) == (1, [fallback.SPOT])


def test_an_unknown_provider_is_a_named_setting_error() -> None:
    with pytest.raises(idle.IdleSettingsError, match="'FARGATE_SPOTT': expected FARGATE_SPOT"):
        idle.IdleSettings.from_env(
            {
                idle.CLUSTER_ENV: "c",
                idle.SERVICE_ENV: "s",
                idle.IDLE_SECONDS_ENV: "60",
                idle.CAPACITY_PROVIDER_ENV: "FARGATE_SPOTT",
            }
        )
