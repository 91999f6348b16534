"""What waits in the intake's dead-letter queue, for ``relion-spot status``.

A message lands there after MAX_RECEIVES receives that ended without a decision (the drainer
crashed on it, or died while holding it). On the last of those receives the drainer records the
submission as rejected with the failure (relion_spot.intake.drain), so each dead letter is told
with that reason; one without a submission id, or without a record (the drainer died rather
than failed), is told so.

Looking is a receive with a visibility timeout of 0: the message stays visible to the next look
and to an admin who clears the queue. The dead-letter queue has no redrive, so the receive count
this raises changes nothing. SQS returns a sample of at most ten messages per receive; the oldest
of those (by SentTimestamp) are shown, and the count is the queue's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .message import submission_id_in
from .table import IntakeTable

SAMPLE = 10
"""The most messages one SQS receive returns."""


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    sent_at: datetime | None
    submission_id: str | None
    reason: str


@dataclass(frozen=True)
class DeadLetters:
    count: int
    """ApproximateNumberOfMessages: visible messages in the queue."""
    oldest: list[DeadLetter]


def _sent_at(message: dict[str, Any]) -> datetime | None:
    sent = str((message.get("Attributes") or {}).get("SentTimestamp", ""))
    return datetime.fromtimestamp(int(sent) / 1000, UTC) if sent.isdigit() else None


def _reason(table: IntakeTable, submission_id: str | None) -> str:
    if submission_id is None:
        return "names no submission id, so no submission could be told"
    record = table.get(submission_id)
    if record is None or not record.final:
        return "no decision recorded: the drainer stopped while holding it"
    return f"{record.state}: {record.message}" if record.message else record.state


def look(sqs: Any, queue_url: str, table: IntakeTable, *, shown: int = 3) -> DeadLetters:
    """The dead-letter queue's size and its ``shown`` oldest messages of one sample."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    count = int(attributes.get("ApproximateNumberOfMessages", "0"))
    if count == 0 or shown <= 0:
        return DeadLetters(count=count, oldest=[])
    messages = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=SAMPLE,
        VisibilityTimeout=0,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["SentTimestamp"],
    ).get("Messages", [])
    epoch = datetime.fromtimestamp(0, UTC)
    messages.sort(key=lambda m: _sent_at(m) or epoch)
    oldest = []
    for message in messages[:shown]:
        submission_id = submission_id_in(str(message.get("Body", "")))
        oldest.append(
            DeadLetter(
                message_id=str(message.get("MessageId", "")),
                sent_at=_sent_at(message),
                submission_id=submission_id,
                reason=_reason(table, submission_id),
            )
        )
    return DeadLetters(count=max(count, len(messages)), oldest=oldest)
