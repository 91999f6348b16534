""" "Budget reached" reaches the lab once per month and cap, however often Slurm retries the
launch the cap refuses (moto's SNS, delivering to an SQS subscription)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot.budget.forecast import Forecast
from relion_spot.budget.guard import notify_reached
from relion_spot.notify.publish import Notifier

NOW = 1_790_000_000.0  # 2026-09-21 UTC


@pytest.fixture
def inbox() -> Iterator[tuple[Notifier, Any, str]]:
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="notify")["TopicArn"]
        queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
        yield Notifier(sns, topic, "lab-gpu1"), sqs, queue


def _count(sqs: Any, queue: str) -> int:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        assert json.loads(message["Body"])["MessageAttributes"]["event"]["Value"] == (
            "budget-reached"
        )
    return len(messages)


def test_once_per_month_and_cap(inbox: tuple[Notifier, Any, str], tmp_path: Path) -> None:
    notifier, sqs, queue = inbox
    over = Forecast(cap_usd=5.0, spent_usd=4.5, running_usd=0.0, asked_usd=1.006)
    assert notify_reached(notifier, tmp_path, over, ["7"], NOW)
    assert not notify_reached(notifier, tmp_path, over, ["8"], NOW + 60)
    assert _count(sqs, queue) == 1

    raised = Forecast(cap_usd=5.5, spent_usd=5.0, running_usd=0.0, asked_usd=1.006)
    assert notify_reached(notifier, tmp_path, raised, ["8"], NOW + 120)
    next_month = NOW + 31 * 86400
    assert notify_reached(notifier, tmp_path, raised, ["9"], next_month)
    assert _count(sqs, queue) == 2


def test_no_topic_no_message(tmp_path: Path) -> None:
    over = Forecast(cap_usd=5.0, spent_usd=4.5, running_usd=0.0, asked_usd=1.006)
    assert not notify_reached(None, tmp_path, over, ["7"], NOW)
