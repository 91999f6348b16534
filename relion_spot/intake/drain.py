"""Drains the intake queue into Slurm, once per submission id, however often a message arrives.

Runs in the controller container beside slurmctld: ``python -m relion_spot.intake.drain`` (a
loop until SIGTERM) or ``--once`` (one receive, then exit). Each step first asks Slurm (squeue)
whether it answers, so nothing is received, and no receive is counted against the message,
while slurmctld is not up. Then, for a message:

  1. Parse it. A message without a usable submission id cannot be answered (no client can look
     its record up): it is logged and deleted.
  2. The table already holds a decision for the id: delete the message, done. (A duplicate
     delivery, a client that sent twice, or a retry after a crash between record and delete.)
  3. Anything else wrong with it: a "rejected" record whose message names the field, the value
     and what is accepted; delete.
  4. Slurm already has a job with the comment ``relion-spot:<id>``: record it as accepted with
     that job id; delete. (A retry after a crash between sbatch and the record.)
  5. Render the job script and run preflight; a refusal is a "rejected" record; delete.
  6. Claim: an item in state "submitting" with the time, written only where no item exists.
  7. sbatch, tagged with the id; a Class3D job after the job that makes and checks its RELION
     image on the CPU partition (relion_spot.intake.images), unless that image is already
     checked. An outright refusal by Slurm is a "rejected" record; an unknown outcome (timeout,
     controller unreachable) leaves the message for a retry. A campaign's later steps
     (relion_spot.jobs.campaign) follow, each after the one before it and under its own
     submission id (derived from the campaign's), found again in Slurm by that id after an
     interrupted drain, and each recorded as accepted under that id.
  8. The "accepted" record (written only over the claim or nothing), then delete.

A cancel request (same queue) names an accepted submission and its job id: anything else is
logged and dropped, and so is a cancel sent by anyone but the submission's sender (SQS's
SenderId, which the sender cannot choose) or an admin principal (ADMIN_IDS_ENV: the stack's
admin role). The drainer notes "cancel-requested" on the submission's item, runs scancel,
and notes "cancelled" (or "cancel-failed" with Slurm's answer); an unknown outcome leaves the
message for a retry. The submission's decision itself never changes.

Each step also looks for jobs Slurm cancelled because their image job failed, and notes them
"cancelled" with a message naming the image: no GPU was launched for them.

A crash anywhere leaves the message to come back after the queue's visibility timeout, and
step 2 or 4 makes the retry a no-op.

Why the claim: step 4 sees only jobs slurmctld still knows, and it forgets a finished job
MinJobAge after the job ends. A job that an interrupted drain submitted was submitted after that
drain's claim; while the first claim is younger than MinJobAge, such a job is still listed, so
"not in squeue" means "never submitted" and submitting is safe. Past that (the message could
not be handled for an hour, e.g. the drainer was down), the drainer cannot tell and does not
guess: it records a rejection that says so, rather than risk running the job twice.

Assumes one drainer per queue (the controller is a single task). Two drainers would still never
record two different decisions for one id, but could both run sbatch for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from relion_spot.jobs.campaign import CampaignParams
from relion_spot.jobs.class3d import DEFAULT_IMAGE, LOCAL_IMAGE, MODES, Mode
from relion_spot.jobs.image import ImageSourceError
from relion_spot.notify.publish import Notification, Notifier
from relion_spot.powersave import logs
from relion_spot.slurm.spec import SPEC_ENV, ClusterSpec, SpecError

from .config import (
    ADMIN_IDS_ENV,
    CONTAINER_CACHE_ENV,
    DATA_ROOT_ENV,
    JOB_MODE_ENV,
    MAX_RECEIVES,
    QUEUE_URL_ENV,
    RECEIVE_WAIT_SECONDS,
    REGION_ENV,
    RELION_IMAGE_ENV,
    SBATCH_ENV,
    SCANCEL_ENV,
    SQUEUE_ENV,
    STAGE_BUCKETS_ENV,
    TABLE_ENV,
)
from .images import ImageChecks
from .message import (
    CancelRequest,
    InvalidSubmission,
    JobParams,
    Submission,
    parse_request,
    submission_id_in,
)
from .prepare import JobPreparer, JobRejected, LaterStep, PreparedJob
from .slurm import SlurmJobs, SlurmRefused, SlurmUnavailable, comment_for
from .table import (
    ACCEPTED,
    CANCEL_FAILED,
    CANCEL_REQUESTED,
    CANCELLED,
    ESTIMATED,
    REJECTED,
    SUBMITTING,
    IntakeTable,
    Record,
    parameters_text,
)

log = logging.getLogger("relion_spot.intake.drain")

_UNIQUE_ID = re.compile(r"A(RO|ID)A[A-Z0-9]{12,124}")
CLAIM_MARGIN_SECONDS = 300
"""A claim counts as too old this long before MinJobAge is reached: room for the clocks of two
controller tasks to differ and for the time between squeue's answer and the decision."""
SLURM_PAUSE_SECONDS = 5.0
ERROR_PAUSE_SECONDS = 10.0

# Step outcomes, as returned by Drainer.step / Drainer.handle.
ACCEPTED_OUTCOME = "accepted"
RECOVERED = "recovered"
REJECTED_OUTCOME = "rejected"
ESTIMATED_OUTCOME = "estimated"
UNCERTAIN = "uncertain"
DUPLICATE = "duplicate"
DISCARDED = "discarded"
RETRY = "retry"
SLURM_UNAVAILABLE = "slurm-unavailable"
CANCELLED_OUTCOME = "cancelled"
CANCEL_FAILED_OUTCOME = "cancel-failed"
CANCEL_IGNORED = "cancel-ignored"


class IntakeConfigError(ValueError):
    """A missing or malformed setting of the drainer; the message names it."""


@dataclass(frozen=True)
class _Delivery:
    message_id: str
    receipt: str
    body: str
    sender_id: str
    received_at: int | None
    receive_count: int = 1

    @classmethod
    def of(cls, message: Mapping[str, Any]) -> _Delivery:
        attributes = message.get("Attributes") or {}
        first = str(attributes.get("ApproximateFirstReceiveTimestamp", ""))
        count = str(attributes.get("ApproximateReceiveCount", "1"))
        return cls(
            message_id=str(message.get("MessageId", "")),
            receipt=str(message.get("ReceiptHandle", "")),
            body=str(message.get("Body", "")),
            sender_id=str(attributes.get("SenderId", "")),
            received_at=int(first) // 1000 if first.isdigit() else None,
            receive_count=int(count) if count.isdigit() else 1,
        )


def same_principal(sender: str, submitter: str) -> bool:
    """Whether two SQS SenderIds are one IAM principal: a user's id (AIDA...) as it is, a role's
    (AROA...:session) without the session name, which changes from one login to the next."""
    if not sender or not submitter:
        return False
    return principal_of(sender) == principal_of(submitter)


def principal_of(sender: str) -> str:
    """The IAM unique id in a SenderId: a role's without its session name."""
    return sender.split(":", 1)[0]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat()


def _raw_text_fields(body: str) -> dict[str, Any]:
    """What a rejected record can still carry from a message that did not validate."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    names = ("user", "template", "submitted_at")
    kept = {n: data[n] for n in names if isinstance(data.get(n), str)}
    if "parameters" in data:
        kept["parameters"] = parameters_text(data["parameters"])
    return {k: v if k == "parameters" else v[:1000] for k, v in kept.items()}


@dataclass
class Drainer:
    sqs: Any
    table: IntakeTable
    queue_url: str
    slurm: SlurmJobs
    prepare: Callable[[JobParams], PreparedJob]
    min_job_age: int
    """slurmctld's MinJobAge: how long squeue still lists a finished job."""
    wait_seconds: int = RECEIVE_WAIT_SECONDS
    clock: Callable[[], float] = time.time
    images: ImageChecks | None = None
    """The RELION image's check before GPU jobs; None: jobs wait for no image job."""
    campaign_steps: Callable[[CampaignParams], tuple[LaterStep, ...]] | None = None
    """A campaign's later steps, rendered without preflight (JobPreparer.later_steps): what a
    drain interrupted mid-campaign submits on the retry. None: campaigns are not recovered."""
    admin_ids: frozenset[str] = frozenset()
    """IAM unique ids whose cancels count for any submission (the admin role's)."""
    notifier: Notifier | None = None
    """The cluster's notification topic: told of each message given up on."""

    def step(self) -> list[str]:
        """One receive (long poll) and whatever it brought; the outcomes, one per message."""
        try:
            self.slurm.submitted()
            self._record_image_failures()
        except SlurmUnavailable as err:
            log.warning("not receiving: Slurm does not answer (%s)", err)
            return [SLURM_UNAVAILABLE]
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=[
                "SenderId",
                "ApproximateFirstReceiveTimestamp",
                "ApproximateReceiveCount",
            ],
        )
        return [self._handle_or_record(message) for message in response.get("Messages") or []]

    def _record_image_failures(self) -> None:
        """Accepted jobs that Slurm cancelled because their image failed: noted cancelled."""
        if self.images is None:
            return
        for sid, reason in self.images.failures().items():
            stored = self.table.get(sid)
            if stored is None or stored.state != ACCEPTED:
                continue
            if stored.cancel_state in (CANCELLED, CANCEL_FAILED):
                continue
            self.table.mark_cancel(sid, CANCELLED, at=int(self.clock()), message=reason)
            log.error("%s: %s", sid, reason)

    def _handle_or_record(self, message: Mapping[str, Any]) -> str:
        """``handle``; where it fails on the message's last receive before the dead-letter
        queue, the submission is first recorded as rejected with the failure, so the client
        sees a terminal state instead of "pending" forever. The failure still propagates."""
        try:
            return self.handle(message)
        except Exception as err:
            delivery = _Delivery.of(message)
            if delivery.receive_count >= MAX_RECEIVES:
                self._record_gave_up(delivery, err)
            raise

    def _record_gave_up(self, delivery: _Delivery, err: Exception) -> None:
        sid = submission_id_in(delivery.body)
        if sid is None:
            log.error("message %s goes to the dead-letter queue unrecorded", delivery.message_id)
            self._tell_dead_lettered(
                f"message {delivery.message_id}",
                f"A message on the intake queue (no submission id in it) failed "
                f"{delivery.receive_count} times (last: {_one_line(err)}) and is in the "
                "dead-letter queue; relion-spot status lists it.",
            )
            return
        stored = self.table.get(sid)
        if stored is not None and stored.final:
            return
        record = Record(
            submission_id=sid,
            state=REJECTED,
            message=(
                f"the intake failed on this submission {delivery.receive_count} times "
                f"(last: {_one_line(err)}); it is in the dead-letter "
                "queue for the cluster's admin"
            ),
            sender_id=delivery.sender_id,
            message_id=delivery.message_id,
            received_at=delivery.received_at,
            decided_at=int(self.clock()),
            **_raw_text_fields(delivery.body),
        )
        self.table.finish(record)
        log.error("%s: recorded as rejected after %d receives", sid, delivery.receive_count)
        self._tell_dead_lettered(
            f"submission {sid}",
            f"Submission {sid} (sender {delivery.sender_id or 'unknown'}): {record.message}. "
            "relion-spot status lists the dead-letter queue.",
        )

    def _tell_dead_lettered(self, what: str, message: str) -> None:
        if self.notifier is not None:
            self.notifier.publish(
                Notification("submission-dead-lettered", f"{what} given up", message)
            )

    def handle(self, message: Mapping[str, Any]) -> str:
        delivery = _Delivery.of(message)
        try:
            request = parse_request(delivery.body)
        except InvalidSubmission as err:
            return self._invalid(delivery, err)
        if isinstance(request, CancelRequest):
            return self._cancel(delivery, request)
        submission = request
        sid = submission.submission_id
        stored = self.table.get(sid)
        if stored is not None and stored.final:
            return self._duplicate(delivery, stored)
        if stored is not None and not self._same_submission(stored, submission, delivery):
            # The message that made the claim comes back on its own; this one may not steer
            # (or dry-run over) a submission already on its way into Slurm.
            log.warning(
                "%s: message %s dropped: it differs from the claimed submission (parameters, "
                "template, sender or dry run)",
                sid,
                delivery.message_id,
            )
            self._delete(delivery)
            return DISCARDED
        try:
            job_id = self.slurm.find(sid)
        except SlurmUnavailable as err:
            return self._later(sid, f"Slurm does not answer ({err})")
        checked_at = self.clock()
        base = self._base(submission, delivery, stored)
        campaign = isinstance(submission.params, CampaignParams)
        if campaign and self.campaign_steps is not None:
            assert isinstance(submission.params, CampaignParams)
            try:
                recovered = self._recover_campaign(delivery, submission.params, base, job_id)
            except SlurmUnavailable as err:
                return self._later(sid, f"Slurm does not answer ({err})")
            if recovered is not None:
                return recovered
        if job_id is not None and not campaign:
            found = replace(
                base,
                state=ACCEPTED,
                job_id=job_id,
                message=f"found in Slurm as job {job_id}, submitted by an earlier drain that "
                "was interrupted before recording it",
            )
            return self._decide(delivery, found, RECOVERED)
        if (
            job_id is None
            and stored is not None
            and stored.claimed_at is not None
            and checked_at - stored.claimed_at >= self.min_job_age - CLAIM_MARGIN_SECONDS
        ):
            return self._decide(delivery, self._uncertain(base, stored.claimed_at), UNCERTAIN)
        try:
            prepared = self.prepare(submission.params)
        except JobRejected as err:
            return self._decide(delivery, replace(base, state=REJECTED, message=str(err)))
        if submission.dry_run:
            estimated = replace(base, state=ESTIMATED, message=f"dry run: {prepared.note}")
            return self._decide(delivery, estimated, ESTIMATED_OUTCOME)
        if stored is None:
            claim = replace(base, state=SUBMITTING, claimed_at=int(self.clock()))
            stored, _ = self.table.claim(claim)
            if stored.final:
                return self._duplicate(delivery, stored)
        base = replace(base, claimed_at=stored.claimed_at)
        after, note = None, prepared.note
        if prepared.needs_image and self.images is not None:
            try:
                prerequisite = self.images.prerequisite()
            except ImageSourceError as err:
                reason = f"the RELION image {self.images.image} cannot be made: {err}"
                return self._decide(delivery, replace(base, state=REJECTED, message=reason))
            except SlurmRefused as err:
                reason = f"Slurm refused the job that makes the RELION image: {err}"
                return self._decide(delivery, replace(base, state=REJECTED, message=reason))
            except SlurmUnavailable as err:
                return self._later(sid, f"the image job's outcome is unknown ({err})")
            after, note = prerequisite.job_id, f"{note}; {prerequisite.note}"
        try:
            job_id = self.slurm.submit(prepared.script, sid, after=after)
        except SlurmRefused as err:
            refused = replace(base, state=REJECTED, message=f"Slurm refused the job: {err}")
            return self._decide(delivery, refused)
        except SlurmUnavailable as err:
            return self._later(sid, f"sbatch's outcome is unknown ({err})")
        return self._accept(delivery, base, prepared, job_id, note, ACCEPTED_OUTCOME)

    def _same_submission(self, stored: Record, submission: Submission, delivery: _Delivery) -> bool:
        """Whether a message is the claimed submission's own (a redelivery or the client's
        retry): same template and parameters, the same sender, not a dry run."""
        return (
            not submission.dry_run
            and stored.template == submission.template
            and stored.parameters == parameters_text(submission.parameters)
            and (not stored.sender_id or same_principal(delivery.sender_id, stored.sender_id))
        )

    def _recover_campaign(
        self, delivery: _Delivery, params: CampaignParams, base: Record, first_job: str | None
    ) -> str | None:
        """A campaign any step of which Slurm already holds (an earlier drain was interrupted):
        never preflighted again (its data may have changed since, and a step is running on it);
        what exists is recorded, what is missing is submitted after it. None when Slurm holds
        none of its steps: then it is submitted as new. Raises SlurmUnavailable."""
        assert self.campaign_steps is not None
        steps = self.campaign_steps(params)
        if first_job is None and not any(self.slurm.find(s.submission_id) for s in steps):
            return None
        if first_job is None:
            note = (
                "its Class3D job is no longer listed by Slurm (it ended more than MinJobAge "
                f"({self.min_job_age} s) ago), found its later steps"
            )
        else:
            note = f"found in Slurm as job {first_job}, submitted by an earlier drain"
        note = f"{note}; {self._submit_later(steps, base, first_job)}"
        accepted = replace(base, state=ACCEPTED, job_id=first_job, message=note)
        return self._decide(delivery, accepted, RECOVERED)

    def _accept(
        self,
        delivery: _Delivery,
        base: Record,
        prepared: PreparedJob,
        job_id: str,
        note: str,
        outcome: str,
    ) -> str:
        """The accepted record, after a campaign's later steps are in Slurm too."""
        if prepared.later:
            try:
                note = f"{note}; {self._submit_later(prepared.later, base, job_id)}"
            except SlurmUnavailable as err:
                return self._later(
                    base.submission_id, f"a campaign step's sbatch outcome is unknown ({err})"
                )
        accepted = replace(base, state=ACCEPTED, job_id=job_id, message=note)
        return self._decide(delivery, accepted, outcome)

    def _submit_later(
        self, steps: tuple[LaterStep, ...], base: Record, first_job: str | None
    ) -> str:
        """Each later step of a campaign in Slurm after the one before it (afterok, killed if
        that one fails), found again after an interrupted drain by its own record (a decision
        stands) or its submission id in Slurm, and recorded under that id (so its progress,
        cost and cancel work as any job's). A step Slurm refuses is recorded rejected; so is a
        step whose step before is no longer known to Slurm (whether it succeeded cannot be
        told); the steps after either are not submitted.
        Raises SlurmUnavailable when an outcome is unknown: the message comes back."""
        after, notes = first_job, []
        campaign = base.submission_id
        for step in steps:
            record = replace(
                base,
                submission_id=step.submission_id,
                template=step.step,
                parameters=parameters_text({"campaign": campaign, "step": step.step}),
                claimed_at=None,
            )
            decided = self.table.get(step.submission_id)
            if decided is not None and decided.final:
                if decided.state != ACCEPTED or not decided.job_id:
                    notes.append(f"{step.step} {decided.state}, none after it")
                    break
                notes.append(f"{step.step} as Slurm job {decided.job_id} ({step.submission_id})")
                after = decided.job_id
                continue
            job_id = self.slurm.find(step.submission_id)
            if job_id is None and after is None:
                message = (
                    f"step {step.step} of campaign {campaign} not submitted: the step before "
                    "it is no longer listed by Slurm, so whether it succeeded cannot be told"
                )
                refused = replace(record, state=REJECTED, message=message)
                self.table.finish(replace(refused, decided_at=int(self.clock())))
                notes.append(f"{step.step} not submitted (the step before it is unknown)")
                break
            if job_id is None:
                try:
                    job_id = self.slurm.submit(step.script, step.submission_id, after=after)
                except SlurmRefused as err:
                    message = f"Slurm refused step {step.step} of campaign {campaign}: {err}"
                    refused = replace(record, state=REJECTED, message=message)
                    self.table.finish(replace(refused, decided_at=int(self.clock())))
                    notes.append(f"{step.step} refused by Slurm ({err}), none after it")
                    break
            message = (
                f"step {step.step} of campaign {campaign}: starts once Slurm job {after} "
                "has succeeded, cancelled by Slurm if it fails"
                if after is not None
                else f"step {step.step} of campaign {campaign}: found in Slurm"
            )
            accepted = replace(record, state=ACCEPTED, job_id=job_id, message=message)
            self.table.finish(replace(accepted, decided_at=int(self.clock())))
            notes.append(f"{step.step} as Slurm job {job_id} ({step.submission_id})")
            after = job_id
        return "then " + ", ".join(notes)

    def _cancel(self, delivery: _Delivery, request: CancelRequest) -> str:
        sid, job_id = request.submission_id, request.job_id
        stored = self.table.get(sid)
        if stored is None or stored.state != ACCEPTED or stored.job_id != job_id:
            found = "no such submission" if stored is None else f"it is {stored.state}"
            if stored is not None and stored.job_id and stored.job_id != job_id:
                found = f"its job is {stored.job_id}"
            log.warning(
                "%s: cancel of job %s from %s dropped: %s", sid, job_id, request.user, found
            )
            self._delete(delivery)
            return CANCEL_IGNORED
        if stored.cancel_state in (CANCELLED, CANCEL_FAILED):
            return self._duplicate(delivery, stored)
        by_admin = bool(delivery.sender_id) and principal_of(delivery.sender_id) in self.admin_ids
        if not same_principal(delivery.sender_id, stored.sender_id) and not by_admin:
            log.warning(
                "%s: cancel of job %s dropped: sent by %s, the submission by %s",
                sid,
                job_id,
                delivery.sender_id or "an unknown sender",
                stored.sender_id or "an unknown sender",
            )
            self._delete(delivery)
            return CANCEL_IGNORED
        self.table.mark_cancel(sid, CANCEL_REQUESTED, at=int(self.clock()))
        try:
            self.slurm.cancel(job_id, sid)
        except SlurmUnavailable as err:
            return self._later(sid, f"scancel's outcome is unknown ({err})")
        except SlurmRefused as err:
            self.table.mark_cancel(sid, CANCEL_FAILED, at=int(self.clock()), message=str(err))
            log.info("%s: cancel of job %s refused by Slurm: %s", sid, job_id, err)
            self._delete(delivery)
            return CANCEL_FAILED_OUTCOME
        note = f"cancelled by a lab admin ({delivery.sender_id})" if by_admin else ""
        self.table.mark_cancel(sid, CANCELLED, at=int(self.clock()), message=note)
        log.info("%s: job %s cancelled for %s %s", sid, job_id, request.user, note)
        self._delete(delivery)
        return CANCELLED_OUTCOME

    def _base(self, submission: Submission, delivery: _Delivery, stored: Record | None) -> Record:
        return Record(
            submission_id=submission.submission_id,
            state="",
            user=submission.user,
            sender_id=delivery.sender_id,
            template=submission.template,
            parameters=parameters_text(submission.parameters),
            submitted_at=submission.submitted_at,
            message_id=delivery.message_id,
            received_at=(stored.received_at if stored else None) or delivery.received_at,
            claimed_at=stored.claimed_at if stored else None,
        )

    def _uncertain(self, base: Record, claimed_at: int) -> Record:
        return replace(
            base,
            state=REJECTED,
            message=(
                f"not submitted again: a drain claimed this submission at {_iso(claimed_at)} "
                f"and was interrupted, and Slurm no longer lists jobs that finished more than "
                f"{self.min_job_age} s ago (MinJobAge), so whether it ran cannot be told; look "
                f"for a job with comment {comment_for(base.submission_id)} in the output "
                "directory, or submit again with a new submission id"
            ),
        )

    def _invalid(self, delivery: _Delivery, err: InvalidSubmission) -> str:
        sid = err.submission_id
        if sid is None:
            log.warning("message %s discarded: %s", delivery.message_id, err)
            self._delete(delivery)
            return DISCARDED
        stored = self.table.get(sid)
        if stored is not None and stored.final:
            return self._duplicate(delivery, stored)
        raw = _raw_text_fields(delivery.body)
        record = Record(
            submission_id=sid,
            state=REJECTED,
            message=str(err),
            sender_id=delivery.sender_id,
            message_id=delivery.message_id,
            received_at=delivery.received_at,
            claimed_at=stored.claimed_at if stored else None,
            **raw,
        )
        return self._decide(delivery, record)

    def _decide(self, delivery: _Delivery, record: Record, outcome: str = "") -> str:
        record = replace(record, decided_at=int(self.clock()))
        stored, wrote = self.table.finish(record)
        if not wrote:
            return self._duplicate(delivery, stored)
        sid = record.submission_id
        if record.state == ACCEPTED:
            log.info(
                "%s: %s Slurm job %s for %s (%s)",
                sid,
                "accepted as" if outcome == ACCEPTED_OUTCOME else "recorded existing",
                record.job_id,
                record.user,
                record.message,
            )
        elif record.state == ESTIMATED:
            log.info("%s: %s for %s", sid, record.message, record.user)
        else:
            log.info("%s: rejected: %s", sid, record.message)
        self._delete(delivery)
        return outcome or REJECTED_OUTCOME

    def _duplicate(self, delivery: _Delivery, stored: Record) -> str:
        job = f" as Slurm job {stored.job_id}" if stored.job_id else ""
        log.info(
            "%s: already %s%s; message %s deleted",
            stored.submission_id,
            stored.state,
            job,
            delivery.message_id,
        )
        self._delete(delivery)
        return DUPLICATE

    def _later(self, sid: str, why: str) -> str:
        log.warning("%s: left on the queue for a retry: %s", sid, why)
        return RETRY

    def _delete(self, delivery: _Delivery) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=delivery.receipt)
        except Exception as err:  # the decision is recorded; the copy that comes back is dropped
            log.warning(
                "message %s not deleted (%s); when it comes back it will be seen as done",
                delivery.message_id,
                _one_line(err),
            )


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


@dataclass(frozen=True)
class DrainSettings:
    queue_url: str
    table: str
    spec: ClusterSpec
    sbatch: tuple[str, ...] = ("sbatch",)
    squeue: tuple[str, ...] = ("squeue",)
    scancel: tuple[str, ...] = ("scancel",)
    data_root: Path | None = None
    mode: Mode = "cloud"
    image: str | None = None
    container_cache: Path | None = None
    stage_buckets: tuple[str, ...] | None = None
    admin_ids: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DrainSettings:
        def required(name: str, what: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise IntakeConfigError(f"{name} is not set; it must name {what}")
            return value

        queue_url = required(QUEUE_URL_ENV, "the intake queue's URL (stack output IntakeQueueUrl)")
        table = required(TABLE_ENV, "the intake table (stack output IntakeTable)")
        try:
            spec = ClusterSpec.from_json(required(SPEC_ENV, "the cluster spec JSON"))
        except SpecError as err:
            raise IntakeConfigError(f"{SPEC_ENV}: {err}") from None
        mode = env.get(JOB_MODE_ENV, "").strip() or "cloud"
        if mode not in MODES:
            raise IntakeConfigError(
                f"{JOB_MODE_ENV} = {mode!r} is not valid: one of {', '.join(MODES)}"
            )
        commands = {}
        for name, default in (
            (SBATCH_ENV, "sbatch"),
            (SQUEUE_ENV, "squeue"),
            (SCANCEL_ENV, "scancel"),
        ):
            try:
                words = shlex.split(env.get(name, ""))
            except ValueError as err:
                raise IntakeConfigError(f"{name}: {err}") from None
            commands[name] = tuple(words or [default])
        data_root = env.get(DATA_ROOT_ENV, "").strip()
        buckets = env.get(STAGE_BUCKETS_ENV)
        admin_ids = frozenset(i.strip() for i in env.get(ADMIN_IDS_ENV, "").split(",") if i.strip())
        malformed = sorted(i for i in admin_ids if not _UNIQUE_ID.fullmatch(i))
        if malformed:
            raise IntakeConfigError(
                f"{ADMIN_IDS_ENV}: {malformed[0]!r} is not an IAM unique id (AROA... of a role "
                "or AIDA... of a user, 16 to 128 upper-case letters and digits)"
            )
        return cls(
            queue_url=queue_url,
            table=table,
            spec=spec,
            sbatch=commands[SBATCH_ENV],
            squeue=commands[SQUEUE_ENV],
            scancel=commands[SCANCEL_ENV],
            data_root=Path(data_root) if data_root else None,
            mode=cast(Mode, mode),
            image=env.get(RELION_IMAGE_ENV, "").strip() or None,
            container_cache=Path(cache)
            if (cache := env.get(CONTAINER_CACHE_ENV, "").strip())
            else None,
            stage_buckets=(
                None if buckets is None else tuple(b for b in buckets.split(",") if b.strip())
            ),
            admin_ids=admin_ids,
        )

    def job_environment(self, region: str) -> dict[str, str]:
        """What every submitted job is told, so its progress reaches the submission's item."""
        return {TABLE_ENV: self.table, REGION_ENV: region}

    def drainer(
        self, *, sqs: Any, dynamodb: Any, wait_seconds: int, notifier: Notifier | None = None
    ) -> Drainer:
        slurm = SlurmJobs(
            sbatch=self.sbatch,
            squeue=self.squeue,
            scancel=self.scancel,
            job_env=self.job_environment(str(dynamodb.meta.region_name or "")),
        )
        image = self.image or (DEFAULT_IMAGE if self.mode == "cloud" else LOCAL_IMAGE)
        preparer = JobPreparer.from_spec(
            self.spec,
            mode=self.mode,
            image=self.image,
            data_root=self.data_root,
            stage_buckets=self.stage_buckets,
        )
        return Drainer(
            sqs=sqs,
            table=IntakeTable(dynamodb, self.table),
            queue_url=self.queue_url,
            slurm=slurm,
            prepare=preparer,
            campaign_steps=preparer.later_steps,
            min_job_age=self.spec.min_job_age,
            wait_seconds=wait_seconds,
            images=ImageChecks(
                slurm=slurm, image=image, mode=self.mode, cache_dir=self.container_cache
            ),
            admin_ids=self.admin_ids,
            notifier=notifier,
        )


def run(drainer: Drainer, *, once: bool, stop: threading.Event) -> int:
    """The drain loop; with ``once``, a single step whose exit status says whether it worked."""
    while not stop.is_set():
        try:
            outcomes = drainer.step()
        except Exception as err:
            # AWS unreachable or a bug: nothing was decided, so any received message comes
            # back after the visibility timeout (and goes to the dead-letter queue at last).
            log.error("drain step failed: %s", _one_line(err))
            if once:
                return 1
            stop.wait(ERROR_PAUSE_SECONDS)
            continue
        if once:
            return 1 if SLURM_UNAVAILABLE in outcomes or RETRY in outcomes else 0
        if SLURM_UNAVAILABLE in outcomes:
            stop.wait(SLURM_PAUSE_SECONDS)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.intake.drain",
        description="Drain the job intake queue into Slurm, once per submission id. Settings "
        f"come from the environment ({QUEUE_URL_ENV}, {TABLE_ENV}, {SPEC_ENV}, ...).",
    )
    parser.add_argument(
        "--once", action="store_true", help="one receive and what it brings, then exit"
    )
    parser.add_argument(
        "--wait-seconds",
        type=int,
        default=RECEIVE_WAIT_SECONDS,
        choices=range(0, 21),
        metavar="0-20",
        help=f"long-poll time of each receive (default {RECEIVE_WAIT_SECONDS})",
    )
    args = parser.parse_args(argv)
    logs.setup("intake")
    try:
        settings = DrainSettings.from_env(os.environ)
    except IntakeConfigError as err:
        print(f"relion-spot intake: {err}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.session.Session()
    drainer = settings.drainer(
        sqs=session.client("sqs"),
        dynamodb=session.client("dynamodb"),
        wait_seconds=args.wait_seconds,
        notifier=Notifier.from_env(
            os.environ, cluster=settings.spec.cluster_name, region=str(session.region_name or "")
        ),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "draining %s into Slurm (%s), decisions in table %s",
        settings.queue_url,
        shlex.join(settings.sbatch),
        settings.table,
    )
    return run(drainer, once=args.once, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
