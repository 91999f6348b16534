"""The submitting side (what the CLI calls): send a submission, then wait for its decision.

``submit`` sends one message and writes nothing else: the controller's drainer is the only
writer of the intake table. ``wait_for_acceptance`` polls the table until the drainer has
decided. Both need only the stack's outputs (IntakeQueueUrl, IntakeTable) and the caller's AWS
credentials: nothing listens on the internet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .message import Submission, new_submission
from .table import ACCEPTED, IntakeTable, Record


class SubmissionRejected(RuntimeError):
    """The drainer refused the submission; the message says why, for the user."""

    def __init__(self, submission_id: str, message: str) -> None:
        super().__init__(f"submission {submission_id} was rejected: {message}")
        self.submission_id = submission_id
        self.reason = message


class SubmissionPending(TimeoutError):
    """No decision within the time given; the submission may still be decided later."""


def submit(
    sqs: Any,
    table: IntakeTable | None,
    queue_url: str,
    *,
    parameters: Mapping[str, Any],
    user: str,
    template: str = "class3d",
    submission_id: str | None = None,
    submitted_at: str | None = None,
    dry_run: bool = False,
) -> Submission:
    """Validate the submission here (a bad parameter fails at once, with the same message the
    drainer would record) and send it. Give ``submission_id`` to retry a send safely: when
    ``table`` already holds that id, nothing is sent again; a second copy on the queue would be
    recognised and dropped by the drainer anyway."""
    submission = new_submission(
        parameters,
        user=user,
        template=template,
        submission_id=submission_id,
        submitted_at=submitted_at,
        dry_run=dry_run,
    )
    if submission_id is not None and table is not None and table.get(submission_id):
        return submission
    sqs.send_message(QueueUrl=queue_url, MessageBody=submission.to_json())
    return submission


def wait_for_decision(
    table: IntakeTable,
    submission_id: str,
    timeout: float,
    *,
    poll_seconds: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Record:
    """The drainer's decision (accepted, rejected or, for a dry run, estimated); raises
    SubmissionPending when ``timeout`` seconds pass without one."""
    deadline = clock() + timeout
    while True:
        record = table.get(submission_id)
        if record is not None and record.final:
            return record
        left = deadline - clock()
        if left <= 0:
            where = (
                "the controller is submitting it to Slurm"
                if record is not None
                else "the controller has not taken it from the queue yet (it may be starting)"
            )
            raise SubmissionPending(
                f"submission {submission_id}: no decision within {timeout:g} s; {where}"
            )
        sleep(min(poll_seconds, left))


def wait_for_acceptance(
    table: IntakeTable,
    submission_id: str,
    timeout: float,
    *,
    poll_seconds: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The Slurm job id once the submission is accepted. Raises SubmissionRejected with the
    drainer's reason, or SubmissionPending when ``timeout`` seconds pass without a decision."""
    record = wait_for_decision(
        table, submission_id, timeout, poll_seconds=poll_seconds, clock=clock, sleep=sleep
    )
    if record.state == ACCEPTED and record.job_id:
        return record.job_id
    raise SubmissionRejected(submission_id, record.message or "(no reason recorded)")
