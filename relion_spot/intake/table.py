"""The intake table: one item per submission, keyed by ``submission_id``.

    submission_id  S  the client's UUID (partition key)
    state          S  "submitting": the drainer is about to run sbatch (a claim, see below)
                      "accepted":   Slurm has the job; job_id says which
                      "rejected":   it will never run; message says why
                      "estimated":  a dry run: checked and estimated, nothing submitted
    job_id         S  Slurm's job id (accepted only)
    report_job_id  S  the same id, written with it: the job whose reports the item takes (the
                      node roles may rewrite it, so only the report forwarder's condition reads
                      it; relion_spot.intake.config.REPORT_JOB)
    message        S  why it was rejected, or what the drainer noted on accepting (e.g. the
                      preflight result, or that the job was found already submitted)
    user           S  who asked, as the client says
    sender_id      S  who sent the message, as SQS says (the IAM principal; not forgeable)
    template       S  "class3d"
    parameters     S  the parameters as given (JSON)
    submitted_at   S  the client's time (ISO 8601)
    received_at    N  epoch seconds: when SQS first handed the message to a drainer
    claimed_at     N  epoch seconds: when a drainer first claimed it, before any sbatch
    decided_at     N  epoch seconds: when it became accepted or rejected
    message_id     S  the SQS message id
    cancel_state   S  "cancel-requested" (the drainer took a cancel request and runs scancel),
                      "cancelled" (scancel succeeded) or "cancel-failed" (Slurm said no:
                      cancel_message says why); the decision above stays as it was
    cancel_message S  Slurm's answer to a cancel that failed, or why Slurm cancelled the job itself
                      (its RELION image failed its check: relion_spot.intake.images)
    cancel_at      N  epoch seconds of the last cancel_state change
    held_reason    S  why Slurm holds the job (the resume program's hold on a configuration
    held_at        N  error), and when
    progress       M  the job's own report while it runs (relion_spot.relion.progress):
                      iteration, resolution, ETA, per-iteration history, state
    log_tail       S  the last lines of the job's output file, reported with progress

Every attribute of a submission's item is the controller's (``CONTROLLER_ATTRIBUTES``, and the
report's two, which its relay copies from the node's report item: relion_spot.intake.relay).
A node may put only its own report items (``report:<instance ARN>:<submission id>``, tests/iam).

A decision is final: ``finish`` writes only where no item exists or the item is still a claim,
so neither a retry nor a second drainer can turn an accepted submission into a rejected one, or
change its job id. A claim keeps the time of the *first* claim (``claim`` never overwrites),
which is what lets a retry trust Slurm's "no such job" (see relion_spot.intake.drain).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import KEY, REPORT_EXPIRES, REPORT_JOB

SUBMITTING = "submitting"
ACCEPTED = "accepted"
REJECTED = "rejected"
ESTIMATED = "estimated"
"""A dry run: checked and estimated, nothing submitted (the message says what was found)."""
FINAL_STATES = (ACCEPTED, REJECTED, ESTIMATED)
CANCEL_REQUESTED = "cancel-requested"
CANCELLED = "cancelled"
CANCEL_FAILED = "cancel-failed"

_TEXT: tuple[str, ...] = ("state", "job_id", "message", "user", "sender_id", "template")
_TEXT += ("parameters", "submitted_at", "message_id", "cancel_state", "cancel_message")
_NUMBERS = ("received_at", "claimed_at", "decided_at", "cancel_at")
HELD_REASON = "held_reason"
HELD_AT = "held_at"
CONTROLLER_ATTRIBUTES: tuple[str, ...] = (*_TEXT, *_NUMBERS, HELD_REASON, HELD_AT)
"""Every attribute the controller writes (the drainer's decision and cancel, the resume
program's hold): none of them is the nodes' to write (tests/iam)."""


@dataclass(frozen=True)
class Record:
    submission_id: str
    state: str
    job_id: str | None = None
    message: str = ""
    user: str = ""
    sender_id: str = ""
    template: str = ""
    parameters: str = ""
    submitted_at: str = ""
    message_id: str = ""
    received_at: int | None = None
    claimed_at: int | None = None
    decided_at: int | None = None
    cancel_state: str = ""
    cancel_message: str = ""
    cancel_at: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


MAX_TEXT_CHARS = 4000
"""Every text attribute is stored cut to this many characters (the parameters to
MAX_PARAMETERS_CHARS), so an item stays far below DynamoDB's 400 KB whatever a message held."""


def _bounded(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return f"{text[: MAX_TEXT_CHARS - 40]}... ({len(text)} characters, cut)"


def _item(record: Record) -> dict[str, Any]:
    item: dict[str, Any] = {KEY: {"S": record.submission_id}}
    for name in _TEXT:
        value = getattr(record, name)
        if value:
            item[name] = {"S": _bounded(str(value))}
    for name in _NUMBERS:
        value = getattr(record, name)
        if value is not None:
            item[name] = {"N": str(int(value))}
    if record.state == ACCEPTED and record.job_id:
        item[REPORT_JOB] = dict(item["job_id"])
    return item


def _record(item: Mapping[str, Any]) -> Record:
    values: dict[str, Any] = {}
    for name in _TEXT:
        if name in item:
            values[name] = item[name].get("S", "")
    for name in _NUMBERS:
        if name in item:
            values[name] = int(float(item[name]["N"]))
    values.setdefault("state", "")
    return Record(submission_id=item[KEY]["S"], **values)


MAX_PARAMETERS_CHARS = 4000
"""The parameters are stored as given, cut to this many characters: an item stays far below
DynamoDB's 400 KB whatever a message carried (JSON-escaping can triple a multi-byte body)."""


def parameters_text(parameters: Mapping[str, Any] | Any) -> str:
    try:
        text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(parameters).__name__} that is not JSON>"
    if len(text) > MAX_PARAMETERS_CHARS:
        return f"{text[: MAX_PARAMETERS_CHARS - 40]}... ({len(text)} characters, cut)"
    return text


def is_submission(item: Mapping[str, Any] | None) -> bool:
    """A raw item is a claim or a decision: it has a state. The table also holds the nodes'
    report items and the permission checks, which have none: no submission, to the drainer,
    the CLI or the selftest."""
    return item is not None and "state" in item


@dataclass
class IntakeTable:
    """The intake table through a boto3 DynamoDB client."""

    client: Any
    name: str

    def get(self, submission_id: str) -> Record | None:
        """The claim or decision stored for ``submission_id`` (``is_submission``); a claim or a
        decision replaces an item that is neither."""
        response = self.client.get_item(
            TableName=self.name, Key={KEY: {"S": submission_id}}, ConsistentRead=True
        )
        item = response.get("Item")
        return _record(item) if is_submission(item) else None

    def claim(self, record: Record) -> tuple[Record, bool]:
        """Store ``record`` (state "submitting") unless a claim or decision exists; returns the
        stored item and whether this call wrote it."""
        if record.state != SUBMITTING or record.claimed_at is None:
            raise ValueError("a claim has state 'submitting' and a claimed_at time")
        try:
            self.client.put_item(
                TableName=self.name,
                Item=_item(record),
                ConditionExpression="attribute_not_exists(#key) OR attribute_not_exists(#state)",
                ExpressionAttributeNames={"#key": KEY, "#state": "state"},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            stored = self.get(record.submission_id)
            if stored is None:  # deleted in between: nothing here writes deletes
                raise
            return stored, False
        return record, True

    def finish(self, record: Record) -> tuple[Record, bool]:
        """Store a decision where there is no claim or decision, or only a claim; returns the
        stored item and whether this call wrote it (False: a decision was already there, and it
        stands)."""
        if not record.final:
            raise ValueError(f"a decision has state {' or '.join(FINAL_STATES)}")
        try:
            self.client.put_item(
                TableName=self.name,
                Item=_item(record),
                ConditionExpression=(
                    "attribute_not_exists(#key) OR attribute_not_exists(#state) "
                    "OR #state = :submitting"
                ),
                ExpressionAttributeNames={"#key": KEY, "#state": "state"},
                ExpressionAttributeValues={":submitting": {"S": SUBMITTING}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            stored = self.get(record.submission_id)
            if stored is None:
                raise
            return stored, False
        return record, True

    def mark_cancel(self, submission_id: str, state: str, *, at: int, message: str = "") -> bool:
        """Note a cancel's progress on an existing item; False when there is no such item."""
        names = {"#key": KEY, "#c": "cancel_state", "#at": "cancel_at", "#m": "cancel_message"}
        values: dict[str, Any] = {":c": {"S": state}, ":at": {"N": str(int(at))}}
        update = "SET #c = :c, #at = :at"
        if message:
            update += ", #m = :m"
            values[":m"] = {"S": message[:1000]}
        else:
            update += " REMOVE #m"
        try:
            self.client.update_item(
                TableName=self.name,
                Key={KEY: {"S": submission_id}},
                UpdateExpression=update,
                ConditionExpression="attribute_exists(#key)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def mark_held(client: Any, table: str, submission_id: str, reason: str, *, at: int) -> bool:
    """Note on an existing item that Slurm holds the submission's job and why (the resume
    program's hold on a configuration error); False when there is no such item."""
    try:
        client.update_item(
            TableName=table,
            Key={KEY: {"S": submission_id}},
            UpdateExpression="SET #r = :r, #at = :at",
            ConditionExpression="attribute_exists(#key)",
            ExpressionAttributeNames={"#key": KEY, "#r": HELD_REASON, "#at": HELD_AT},
            ExpressionAttributeValues={":r": {"S": reason[:1000]}, ":at": {"N": str(int(at))}},
        )
    except client.exceptions.ConditionalCheckFailedException:
        return False
    return True


def submission_item(client: Any, table: str, submission_id: str) -> dict[str, Any]:
    """A submission's whole item (progress, log tail, decision) as plain values; {} when the
    table holds none (``is_submission``)."""
    from relion_spot.cost.store import deserialize

    item = client.get_item(
        TableName=table, Key={KEY: {"S": submission_id}}, ConsistentRead=True
    ).get("Item")
    return deserialize(item) if is_submission(item) else {}


def create_table(client: Any, name: str) -> None:
    """The table as the construct defines it (for the embedded cloud and tests)."""
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
    )
    client.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": REPORT_EXPIRES},
    )
