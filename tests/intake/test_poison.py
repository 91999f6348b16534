"""Hostile and malformed messages, as someone who may only send to the intake queue sends them:
each is refused with a record the client reads (never "pending" forever), nothing reaches Slurm,
the drainer keeps draining, and no traceback stands in for a reason."""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import pytest

from relion_spot.intake.client import SubmissionRejected, wait_for_acceptance
from relion_spot.intake.config import MAX_RECEIVES
from relion_spot.intake.table import MAX_PARAMETERS_CHARS
from relion_spot.notify.publish import Notifier

from .conftest import Intake
from .test_drain import HeldMessages

SID = "3c1f2e4d-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
HEAD = (
    '{"version": 1, "submission_id": "' + SID + '", "template": "class3d", '
    '"user": "mallory", "submitted_at": "2026-11-03T10:15:00Z", "parameters": '
)


def _body(parameters_json: str) -> str:
    return HEAD + parameters_json + "}"


def _rejected(intake: Intake, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.INFO, logger="relion_spot.intake.drain"):
        assert intake.drainer().step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None and record.state == "rejected"
    with pytest.raises(SubmissionRejected):
        wait_for_acceptance(intake.table, SID, timeout=1)
    assert intake.slurm.sbatch_calls() == []
    assert intake.queued() == 0
    assert all(r.exc_info is None for r in caplog.records), "bad input never logs a traceback"
    return record.message


@pytest.mark.parametrize(
    ("parameters_json", "reason"),
    [
        ('{"K": 1' + "0" * 5000 + "}", "the message is not JSON (Exceeds"),
        ('{"random_seed": ' + "9" * 400 + "}", "parameter random_seed = '<a 400-digit number>'"),
        ('{"K": 1e400}', "parameter K = inf is not valid"),
        ('{"tau2_fudge": -1e400}', "parameter tau2_fudge = -inf is not valid"),
        ("[" * 100_000 + "]" * 100_000, "the message is not JSON (maximum recursion"),
        (
            '{"preset": "benchmark", "project_dir": "/etc"}',
            "parameter project_dir = '/etc' is not valid",
        ),
        (
            '{"preset": "benchmark", "project_dir": "/data/p/../../etc"}',
            "parameter project_dir = '/data/p/../../etc'",
        ),
        (
            '{"preset": "benchmark", "project_dir": "/data/.relion-spot"}',
            "parameter project_dir = '/data/.relion-spot'",
        ),
        ('{"particles": "../../other/particles.star"}', "parameter particles = '../../other"),
        ('{"reference": "/root/ref.mrc"}', "parameter reference = '/root/ref.mrc' is not valid"),
        ('{"particles": "--o"}', "parameter particles = '--o' is not valid: a path, not a flag"),
        (
            '{"preset": "benchmark", "scratch_dir": "/data/scratch"}',
            "parameter scratch_dir = '/data/scratch'",
        ),
        ('{"particles": "p\\u00e9.star"}', "parameter particles = 'p\u00e9.star' is not valid"),
        ('{"particles": "' + "a" * 300 + '"}', "parameter particles = 'aaaa"),
        ('{"output_dir": "../Class3D"}', "parameter output_dir = '../Class3D' is not valid"),
    ],
)
def test_a_poison_message_is_a_recorded_rejection(
    intake: Intake, caplog: pytest.LogCaptureFixture, parameters_json: str, reason: str
) -> None:
    intake.send(_body(parameters_json))
    message = _rejected(intake, caplog)
    assert message.startswith(reason), message


def test_a_multibyte_body_that_grows_when_escaped_is_recorded_cut(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    """250 KB of four-byte characters would be 750 KB as escaped JSON, past DynamoDB's 400 KB."""
    parameters = {"K": 2, "\U0001f9ea" * 30_000: "\U0001f9ea" * 30_000}
    intake.send(_body(json.dumps(parameters, ensure_ascii=False)))
    message = _rejected(intake, caplog)
    assert message.startswith("no job parameter '\U0001f9ea")
    assert len(message) < 1000
    record = intake.table.get(SID)
    assert record is not None
    assert len(record.parameters) <= MAX_PARAMETERS_CHARS
    assert record.parameters.endswith("characters, cut)")


def test_a_message_that_fails_every_receive_ends_rejected_not_pending(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    """A drainer bug on one message: each receive fails, and on the last receive before the
    dead-letter queue the submission is recorded as rejected with the failure."""

    def broken_prepare(params: Any) -> Any:
        raise RuntimeError("a bug the tests put here")

    sns = boto3.client("sns", region_name=intake.sqs.meta.region_name)
    topic = sns.create_topic(Name="lab-notifications")["TopicArn"]
    inbox = intake.sqs.create_queue(QueueName="lab-inbox")["QueueUrl"]
    inbox_arn = intake.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn["Attributes"]["QueueArn"])
    notifier = Notifier(sns, topic, "lab-gpu1")
    intake.send(_body('{"preset": "benchmark", "K": 2}'))
    for receive in range(1, MAX_RECEIVES + 1):
        held = HeldMessages(intake.sqs)
        drainer = intake.drainer(sqs=held, prepare=broken_prepare, notifier=notifier)
        with pytest.raises(RuntimeError):
            drainer.step()
        record = intake.table.get(SID)
        if receive < MAX_RECEIVES:
            assert record is None or not record.final, f"decided early, at receive {receive}"
        # What the visibility timeout does for the message the failed step held.
        intake.sqs.change_message_visibility(
            QueueUrl=intake.queue_url, ReceiptHandle=held.receipts[-1], VisibilityTimeout=0
        )
    record = intake.table.get(SID)
    assert record is not None and record.state == "rejected"
    assert record.message.startswith(
        f"the intake failed on this submission {MAX_RECEIVES} times (last: RuntimeError: a bug"
    )
    with pytest.raises(SubmissionRejected):
        wait_for_acceptance(intake.table, SID, timeout=1)
    # The lab is told once, as the message leaves for the dead-letter queue (no alarm stands).
    told = intake.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages", [])
    assert len(told) == 1, told
    body = json.loads(told[0]["Body"])
    assert body["MessageAttributes"]["event"]["Value"] == "submission-dead-lettered"
    assert body["Subject"] == f"[lab-gpu1] submission {SID} given up"
    assert "RuntimeError: a bug the tests put here" in body["Message"]
