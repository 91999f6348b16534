"""Publishing an event to the cluster's notification topic.

The events are published where they are already known: the job record writer (a job done, failed,
or reclaimed and requeued to resume), the resume program (the budget reached), and the intake's
drainer (a message it gave up on, on its last receive before the dead-letter queue: no alarm stands
and bills for that while the cluster sleeps). A cluster
deployed without ``notify_email`` has no topic: ``Notifier.from_env`` returns None and nothing is
published. A failed publish is logged and never stops what the publisher was doing: a job record
or a launch decision matters more than its e-mail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

TOPIC_ENV = "RELION_SPOT_NOTIFY_TOPIC_ARN"
EVENTS = (
    "job-done",
    "job-failed",
    "job-reclaimed",
    "campaign-done",
    "budget-reached",
    "submission-dead-lettered",
)
"""What a notification can be about; the ``event`` message attribute carries one, so a lab can
filter its subscriptions (SNS filter policies) by event."""
MAX_SUBJECT_CHARS = 100
"""SNS refuses a longer e-mail subject."""


@dataclass(frozen=True)
class Notification:
    event: str
    subject: str
    message: str

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"event {self.event!r} is not one of {', '.join(EVENTS)}")


@dataclass
class Notifier:
    sns: Any
    topic_arn: str
    cluster: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, cluster: str, region: str) -> Notifier | None:
        topic = env.get(TOPIC_ENV, "").strip()
        if not topic:
            return None
        import boto3

        return cls(boto3.session.Session().client("sns", region_name=region), topic, cluster)

    def publish(self, notification: Notification) -> bool:
        subject = f"[{self.cluster}] {notification.subject}"
        if len(subject) > MAX_SUBJECT_CHARS:
            subject = subject[: MAX_SUBJECT_CHARS - 3] + "..."
        try:
            self.sns.publish(
                TopicArn=self.topic_arn,
                Subject=subject,
                Message=notification.message,
                MessageAttributes={
                    "event": {"DataType": "String", "StringValue": notification.event},
                    "cluster": {"DataType": "String", "StringValue": self.cluster},
                },
            )
        except (BotoCoreError, ClientError) as err:
            log.error("could not publish %s to %s: %s", notification.event, self.topic_arn, err)
            return False
        log.info("notified %s: %s", notification.event, subject)
        return True
