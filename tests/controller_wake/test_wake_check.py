"""The scheduled wake check against moto's SQS and ECS: a controller asleep with a message in its
intake queue is woken, whoever sent the message; nothing waiting or already up changes nothing;
a message being handled counts, a delayed one does not yet (as the idle watch counts them)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from relion_spot.controller_wake import handler
from relion_spot.slurm import idle
from tests.slurm.test_idle import DOWN, Slurm

REGION = "us-east-1"
CLUSTER, SERVICE = "lab-gpu1", "lab-gpu1-controller"


@pytest.fixture
def aws(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family="ctl", containerDefinitions=[{"name": "slurmctld", "image": "x", "memory": 512}]
    )
    ecs.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition="ctl", desiredCount=0)
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="intake")["QueueUrl"]
    monkeypatch.setenv(handler.QUEUE_URL_ENV, url)
    monkeypatch.setenv(handler.CLUSTER_ENV, CLUSTER)
    monkeypatch.setenv(handler.SERVICE_ENV, SERVICE)
    return {"ecs": ecs, "sqs": sqs, "url": url}


def _check(aws: dict[str, Any]) -> dict[str, Any]:
    return handler.on_schedule({"source": "aws.events"}, sqs=aws["sqs"], ecs=aws["ecs"])


def _desired(aws: dict[str, Any]) -> int:
    found = aws["ecs"].describe_services(cluster=CLUSTER, services=[SERVICE])["services"]
    return int(found[0]["desiredCount"])


def test_a_message_sent_by_any_means_wakes_the_sleeping_controller(aws: dict[str, Any]) -> None:
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody='{"not": "from the CLI"}')
    assert _check(aws) == {"outcome": handler.WOKEN, "waiting": 1}
    assert _desired(aws) == 1
    assert _check(aws) == {"outcome": handler.AWAKE, "waiting": 1}, "woken once"
    assert _desired(aws) == 1


def test_an_empty_queue_leaves_the_controller_asleep(aws: dict[str, Any]) -> None:
    assert _check(aws) == {"outcome": handler.NOTHING_WAITING, "waiting": 0}
    assert _desired(aws) == 0


def test_a_message_being_handled_counts_and_a_delayed_one_not_yet(aws: dict[str, Any]) -> None:
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody="later", DelaySeconds=900)
    assert _check(aws)["outcome"] == handler.NOTHING_WAITING
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody="now")
    aws["sqs"].receive_message(QueueUrl=aws["url"], VisibilityTimeout=600)
    assert _check(aws) == {"outcome": handler.WOKEN, "waiting": 1}


def test_the_check_and_the_idle_watch_agree_on_what_is_waiting(aws: dict[str, Any]) -> None:
    """Whatever the check wakes the controller for also keeps it up: the two never fight."""
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody="now")
    aws["sqs"].receive_message(QueueUrl=aws["url"], VisibilityTimeout=600)
    assert _check(aws)["outcome"] == handler.WOKEN
    reason = idle.busy_reason(Slurm(("", DOWN)), aws["sqs"], aws["url"])
    assert reason == "1 submission(s) in the intake queue"


def test_a_missing_service_fails_the_run_for_its_log(aws: dict[str, Any], monkeypatch) -> None:
    monkeypatch.setenv(handler.SERVICE_ENV, "gone")
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody="now")
    with pytest.raises(LookupError, match="ECS service gone not found in cluster lab-gpu1"):
        _check(aws)
