"""The controller's idle watch against moto's ECS and SQS, Slurm's answers scripted: it sleeps only
after an uninterrupted idle stretch, never on a doubt, and a submission wakes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import boto3
import pytest

from relion_spot.controller_wake.wake import wake_controller
from relion_spot.powersave.slurm import CommandResult
from relion_spot.slurm import idle
from tests.fakes import FakeClock

REGION = "us-east-1"


def nodes_json(*nodes: tuple[str, str, str]) -> str:
    """``scontrol --json show nodes`` as Slurm 24.11 writes it (the fields read here)."""
    listed = [{"name": n, "state": s.split("+"), "reason": r} for n, s, r in nodes]
    return json.dumps({"nodes": listed, "errors": [], "warnings": []})


DOWN = nodes_json(
    ("gpu-1", "IDLE+CLOUD+POWERED_DOWN", ""), ("gpu-2", "IDLE+CLOUD+POWERED_DOWN", "")
)
UP = nodes_json(("gpu-1", "IDLE+CLOUD", ""), ("gpu-2", "IDLE+CLOUD+POWERED_DOWN", ""))


class Slurm:
    """Scripted squeue/scontrol answers, one per check (the last repeats)."""

    def __init__(self, *answers: tuple[str, str]) -> None:
        self.answers = list(answers)
        self.checks = 0

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        if argv[0] == "squeue":  # each check starts with squeue
            self.checks += 1
        jobs, nodes = self.answers[min(self.checks, len(self.answers)) - 1]
        if argv[0] == "squeue":
            return CommandResult(0, jobs) if jobs != "fail" else CommandResult(1, "", "down")
        return CommandResult(0, nodes)


@pytest.fixture
def aws(moto_aws: None) -> dict[str, Any]:
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName="lab-gpu1")
    ecs.register_task_definition(
        family="ctl", containerDefinitions=[{"name": "slurmctld", "image": "x", "memory": 512}]
    )
    ecs.create_service(cluster="lab-gpu1", serviceName="lab-gpu1-controller",
                       taskDefinition="ctl", desiredCount=1)  # fmt: skip
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="intake")["QueueUrl"]
    return {"ecs": ecs, "sqs": sqs, "url": url}


def _settings(aws: dict[str, Any], idle_seconds: int = 120) -> idle.IdleSettings:
    return idle.IdleSettings.from_env(
        {
            idle.CLUSTER_ENV: "lab-gpu1",
            idle.SERVICE_ENV: "lab-gpu1-controller",
            idle.IDLE_SECONDS_ENV: str(idle_seconds),
            idle.QUEUE_URL_ENV: aws["url"],
        }
    )


def _desired(aws: dict[str, Any]) -> int:
    services = aws["ecs"].describe_services(cluster="lab-gpu1", services=["lab-gpu1-controller"])
    return int(services["services"][0]["desiredCount"])


def test_sleeps_after_an_uninterrupted_idle_stretch_and_a_submission_wakes_it(
    aws: dict[str, Any],
) -> None:
    clock = FakeClock()
    # busy (a job), busy (a node up), then idle for good
    slurm = Slurm(("7\n", DOWN), ("", UP), ("", DOWN))
    settings = _settings(aws)
    assert idle.watch(settings, ecs=aws["ecs"], sqs=aws["sqs"], runner=slurm,
                      clock=clock, sleep=clock.sleep, rounds=100)  # fmt: skip
    assert _desired(aws) == 0
    # two busy checks, then idle_seconds of idle checks
    assert clock.now == pytest.approx(2 * settings.check_seconds + settings.idle_seconds)

    assert wake_controller(aws["ecs"], "lab-gpu1", "lab-gpu1-controller")
    assert _desired(aws) == 1
    assert not wake_controller(aws["ecs"], "lab-gpu1", "lab-gpu1-controller")


@pytest.mark.parametrize(
    "answers",
    [(("fail", DOWN),), (("", UP),), (("3\n4\n", DOWN),)],
    ids=["slurm-silent", "node-up", "jobs"],
)
def test_never_sleeps_while_busy_or_in_doubt(aws: dict[str, Any], answers: tuple) -> None:
    clock = FakeClock()
    assert not idle.watch(_settings(aws), ecs=aws["ecs"], sqs=aws["sqs"], runner=Slurm(*answers),
                          clock=clock, sleep=clock.sleep, rounds=50)  # fmt: skip
    assert _desired(aws) == 1


def test_a_node_is_read_by_its_state_not_by_words_in_its_reason(aws: dict[str, Any]) -> None:
    """A reason is free text (``scontrol update reason=...``); in ``show node -o`` it ran to the
    end of the line and its ``State=IDLE`` overrode the node's own state."""
    booting = nodes_json(
        ("gpu-1", "DOWN+CLOUD+POWERING_UP", "spot reclaim State=IDLE+POWERED_DOWN")
    )
    assert idle.busy_reason(Slurm(("", booting)), aws["sqs"], aws["url"]) == (
        "node gpu-1 is DOWN+CLOUD+POWERING_UP"
    )


@pytest.mark.parametrize("answer", ["not json", '{"errors": []}', '{"nodes": [{"name": "g"}]}'])
def test_a_node_list_that_cannot_be_read_keeps_it_up(aws: dict[str, Any], answer: str) -> None:
    reason = idle.busy_reason(Slurm(("", answer)), aws["sqs"], aws["url"])
    assert reason is not None and reason.startswith("Slurm's node list cannot be read")


def test_a_waiting_submission_keeps_it_up(aws: dict[str, Any]) -> None:
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody="{}")
    reason = idle.busy_reason(Slurm(("", DOWN)), aws["sqs"], aws["url"])
    assert reason == "1 submission(s) in the intake queue"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "must name the controller's ECS cluster and service"),
        ({idle.CLUSTER_ENV: "c", idle.SERVICE_ENV: "s", idle.IDLE_SECONDS_ENV: "5"}, "at least 10"),
        ({idle.CLUSTER_ENV: "c", idle.SERVICE_ENV: "s", idle.IDLE_SECONDS_ENV: "x"}, "'x'"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(idle.IdleSettingsError, match=message):
        idle.IdleSettings.from_env(env)


def test_waking_an_unknown_service_is_an_error(aws: dict[str, Any]) -> None:
    with pytest.raises(LookupError, match="not found"):
        wake_controller(aws["ecs"], "lab-gpu1", "nope")
