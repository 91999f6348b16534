"""Every message leaves a record the lab can see: what the intake gave up on waits in the
dead-letter queue, and ``relion-spot status`` tells how many and, for the oldest, their message
ids and why (the rejection recorded on the last receive, or that none could be)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest

from relion_spot.cli import main
from relion_spot.intake.config import MAX_RECEIVES
from relion_spot.intake.message import new_submission
from tests.intake.test_drain import HeldMessages

from .conftest import STACK, Cluster


def _broken_prepare(params: Any) -> Any:
    raise RuntimeError("a bug the tests put here")


def _send(cluster: Cluster, body: str) -> str:
    return str(cluster.sqs.send_message(QueueUrl=cluster.queue_url, MessageBody=body)["MessageId"])


def _crash_every_receive(cluster: Cluster) -> None:
    """A drainer that fails on the message each time; after each failure the visibility timeout
    (here at once) makes the message visible again."""
    for _ in range(MAX_RECEIVES):
        held = HeldMessages(cluster.sqs)
        drainer = replace(cluster.drainer(), sqs=held, prepare=_broken_prepare)
        with pytest.raises(RuntimeError):
            drainer.step()
        cluster.sqs.change_message_visibility(
            QueueUrl=cluster.queue_url, ReceiptHandle=held.receipts[-1], VisibilityTimeout=0
        )


def _die_holding_it(cluster: Cluster) -> None:
    """A drainer killed after each receive (of both messages), before any decision."""
    for _ in range(MAX_RECEIVES):
        received = cluster.sqs.receive_message(
            QueueUrl=cluster.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        assert len(received["Messages"]) == 2


def _redrive(cluster: Cluster) -> None:
    """The next receive finds the queue without them: SQS has moved them to the dead letters."""
    received = cluster.sqs.receive_message(QueueUrl=cluster.queue_url, MaxNumberOfMessages=10)
    assert received.get("Messages") is None


def test_status_lists_what_the_intake_gave_up_on(cluster: Cluster, capsys: Any) -> None:
    crashing = new_submission({"preset": "benchmark", "K": 2}, user="alice")
    crashing_id = _send(cluster, crashing.to_json())
    _crash_every_receive(cluster)
    _redrive(cluster)
    held = new_submission({"preset": "benchmark", "K": 3}, user="bob")
    held_id = _send(cluster, held.to_json())
    time.sleep(0.01)  # SentTimestamp counts milliseconds: two sends, two times
    nameless_id = _send(cluster, '{"nothing": "to go by"}')
    _die_holding_it(cluster)
    _redrive(cluster)

    assert main(["status", "--stack", STACK]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("dead-letter queue:"))
    header, *letters = out[start:]
    assert header == "dead-letter queue: 3 message(s) the intake gave up on; the oldest 3:"
    assert [line.split()[0] for line in letters] == [crashing_id, held_id, nameless_id]
    assert letters[0].endswith(
        f"submission {crashing.submission_id}: rejected: the intake failed on this submission "
        f"{MAX_RECEIVES} times (last: RuntimeError: a bug the tests put here); it is in the "
        "dead-letter queue for the cluster's admin"
    )
    assert letters[1].endswith(
        f"submission {held.submission_id}: no decision recorded: the drainer stopped while "
        "holding it"
    )
    assert letters[2].endswith(
        "submission -: names no submission id, so no submission could be told"
    )
    # The submitter's own view: a terminal state, not "pending".
    rejected = cluster.table.get(crashing.submission_id)
    assert rejected is not None and rejected.state == "rejected"

    # Looking leaves them there, for the next look and for the admin.
    assert main(["status", "--stack", STACK, "--json"]) == 0
    captured = capsys.readouterr()
    assert isinstance(json.loads(captured.out), list)
    assert captured.err.startswith("dead-letter queue: 3 message(s)")


def test_an_empty_dead_letter_queue_adds_nothing(cluster: Cluster, capsys: Any) -> None:
    assert main(["status", "--stack", STACK]) == 0
    assert "dead-letter" not in capsys.readouterr().out
