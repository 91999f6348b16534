"""The record writer tells the lab how each job attempt ended, through the cluster's SNS topic
(moto's SNS, delivering to an SQS subscription that stands where the lab's mailbox is): once per
attempt, nothing for a cancel, and a retried run (the record already written) says nothing."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from relion_spot.cost.config import CostConfig
from relion_spot.cost.jobcomp import record
from relion_spot.notify.publish import Notifier

from .conftest import CLUSTER, REGION, Account, slurm_env


@pytest.fixture
def inbox(account: Account) -> dict[str, Any]:
    sns, sqs = boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="notify")["TopicArn"]
    queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return {"notifier": Notifier(sns, topic, CLUSTER), "sqs": sqs, "queue": queue}


def _delivered(inbox: dict[str, Any]) -> list[dict[str, Any]]:
    sqs, queue = inbox["sqs"], inbox["queue"]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in messages]


def _write(account: Account, inbox: dict[str, Any], env: dict[str, str]) -> str:
    config = CostConfig.from_env(account.environ, need_costs=False)
    return record(env, config, (account.ec2, account.dynamodb), inbox["notifier"])


@pytest.mark.parametrize(
    ("state", "event", "subject"),
    [
        ("COMPLETED", "job-done", "job 21 (class3d, alice) done"),
        ("FAILED", "job-failed", "job 21 (class3d, alice) failed"),
        ("OUT_OF_MEMORY", "job-failed", "job 21 (class3d, alice) out_of_memory"),
        ("PENDING", "job-reclaimed", "job 21 (class3d, alice) reclaimed, resuming"),
        ("NODE_FAIL", "job-reclaimed", "job 21 (class3d, alice) reclaimed, resuming"),
    ],
)
def test_an_ended_attempt_is_told_once(
    account: Account, inbox: dict[str, Any], state: str, event: str, subject: str
) -> None:
    account.launch(node="gpu-1")
    env = slurm_env(
        "21", nodes="gpu-1", start=1_790_000_000, end=1_790_003_600, state=state, procs=4
    )

    assert _write(account, inbox, env) == "written"
    (message,) = _delivered(inbox)
    assert message["MessageAttributes"]["event"]["Value"] == event
    assert message["MessageAttributes"]["cluster"]["Value"] == CLUSTER
    assert message["Subject"] == f"[{CLUSTER}] {subject}"
    assert "relion-spot status 21" in message["Message"]

    assert _write(account, inbox, env) == "duplicate"
    assert _delivered(inbox) == []


def test_a_campaigns_postprocess_completing_is_told_as_the_campaign_done(
    account: Account, inbox: dict[str, Any]
) -> None:
    account.launch(node="cpu-1")
    env = slurm_env(
        "23", nodes="cpu-1", start=1_790_000_000, end=1_790_000_060, state="COMPLETED", procs=2
    )
    env |= {"JOBNAME": "postprocess-3c9a1f2e", "PARTITION": "cpu"}
    assert _write(account, inbox, env) == "written"
    (message,) = _delivered(inbox)
    assert message["MessageAttributes"]["event"]["Value"] == "campaign-done"
    assert message["Subject"] == f"[{CLUSTER}] campaign 3c9a1f2e done"
    assert "relion-spot status 23" in message["Message"]


def test_a_pull_s_export_completing_is_not_mailed_and_its_failure_is(
    account: Account, inbox: dict[str, Any]
) -> None:
    """The lab waits for its export at the terminal (relion-spot pull): its end is no news."""
    account.launch(node="cpu-1")
    env = slurm_env(
        "24", nodes="cpu-1", start=1_790_000_000, end=1_790_000_030, state="COMPLETED", procs=2
    )
    env |= {"JOBNAME": "export", "PARTITION": "cpu"}
    assert _write(account, inbox, env) == "written"
    assert _delivered(inbox) == []
    env |= {"JOBID": "25", "JOBSTATE": "FAILED"}
    assert _write(account, inbox, env) == "written"
    (message,) = _delivered(inbox)
    assert message["MessageAttributes"]["event"]["Value"] == "job-failed"


def test_a_cancel_is_not_mailed(account: Account, inbox: dict[str, Any]) -> None:
    account.launch(node="gpu-1")
    env = slurm_env(
        "22", nodes="gpu-1", start=1_790_000_000, end=1_790_000_600, state="CANCELLED", procs=4
    )
    assert _write(account, inbox, env) == "written"
    assert _delivered(inbox) == []


def test_a_topic_that_refuses_does_not_lose_the_record(account: Account) -> None:
    account.launch(node="gpu-1")
    sns = boto3.client("sns", region_name=REGION)
    gone = Notifier(sns, f"arn:aws:sns:{REGION}:123456789012:deleted", CLUSTER)
    config = CostConfig.from_env(account.environ, need_costs=False)
    env = slurm_env(
        "23", nodes="gpu-1", start=1_790_000_000, end=1_790_000_600, state="COMPLETED", procs=4
    )
    assert record(env, config, (account.ec2, account.dynamodb), gone) == "written"
