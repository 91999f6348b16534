"""A job submission as it travels on the intake queue: one JSON object, schema version 1.

    {
      "version": 1,
      "submission_id": "7d9f4c1e-0a53-4c55-9b7e-2f7c2b1f6a10",   a UUID the client makes up
      "template": "class3d",                                     the job template to fill in
      "parameters": {"preset": "benchmark", "K": 4},             relion_spot.jobs.parameters
      "user": "alice",                                           who asked (as the client says)
      "submitted_at": "2026-11-03T10:15:00Z"                     ISO 8601 with a time zone
    }

A cancel request travels on the same queue (the drainer is the one process that may run Slurm
commands); it names the submission and its job, and has no template or parameters:

    {"version": 1, "action": "cancel", "submission_id": "...", "job_id": "42",
     "user": "alice", "submitted_at": "2026-11-03T11:00:00Z"}

The submission id is the idempotency key from end to end: the intake table is keyed by it, and
Slurm carries it in the job's comment. Every check below refuses with one message that names the
field, the value given and what is accepted; the drainer stores that message as the rejection.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relion_spot.jobs.campaign import CampaignParams, campaign_from_mapping
from relion_spot.jobs.export import ExportParams, export_from_mapping
from relion_spot.jobs.imports import ImportParams, import_from_mapping
from relion_spot.jobs.parameters import Class3dParams, JobParameterError, from_mapping
from relion_spot.jobs.select import SelectParams, select_from_mapping
from relion_spot.jobs.stage import StageParams, stage_from_mapping
from relion_spot.jobs.synthetic import SyntheticParams, synthetic_from_mapping

from .config import KEY

SCHEMA_VERSION = 1
TEMPLATES: tuple[str, ...] = (
    "class3d",
    "stage",
    "select",
    "synthetic",
    "campaign",
    "export",
    "import",
)
JobParams = (
    Class3dParams
    | StageParams
    | SelectParams
    | SyntheticParams
    | CampaignParams
    | ExportParams
    | ImportParams
)
"""The validated parameters of any template."""
FIELDS: tuple[str, ...] = ("version", KEY, "template", "parameters", "user", "submitted_at")
OPTIONAL_FIELDS: tuple[str, ...] = ("dry_run",)
"""``dry_run: true``: check and estimate the job, record that, and submit nothing."""
ACTION = "action"
SUBMIT = "submit"
CANCEL = "cancel"
CANCEL_FIELDS: tuple[str, ...] = ("version", ACTION, KEY, "job_id", "user", "submitted_at")
MAX_USER_CHARS = 128
ID_ACCEPTED = "a UUID in lowercase with hyphens, e.g. 7d9f4c1e-0a53-4c55-9b7e-2f7c2b1f6a10"
MAX_SHOWN_CHARS = 80
"""A rejected value is quoted in the message, cut to this length."""


class InvalidSubmission(ValueError):
    """The message cannot be run; ``submission_id`` is set when the message named a valid one
    (so the rejection can be recorded where the client looks for it)."""

    def __init__(self, message: str, submission_id: str | None = None) -> None:
        super().__init__(message)
        self.submission_id = submission_id


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<a {round(value.bit_length() * 0.30103)}-digit number>"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


_ID_IN_TEXT = re.compile(
    rf'"{KEY}"\s*:\s*"([0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}})"'
)


def submission_id_in(body: str) -> str | None:
    """The submission id a raw message names, found in its text (for a message that does not
    parse or cannot be processed, so its fate is recorded where the client looks)."""
    found = _ID_IN_TEXT.search(body)
    return canonical_id(found.group(1)) if found else None


def _load(body: object) -> Any:
    """JSON of a queue message; InvalidSubmission for anything json cannot take (not JSON, an
    integer of more digits than Python converts, nesting deeper than its recursion limit),
    carrying the submission id where the raw text names one, so the rejection is recorded where
    the client looks."""
    try:
        return json.loads(body)  # type: ignore[arg-type]
    except json.JSONDecodeError as err:
        reason = f"{err.msg} at char {err.pos}"
    except (TypeError, ValueError, RecursionError) as err:
        reason = str(err).splitlines()[0][:MAX_SHOWN_CHARS]
    raise InvalidSubmission(
        f"the message is not JSON ({reason})",
        submission_id_in(body) if isinstance(body, str) else None,
    )


def canonical_id(value: object) -> str | None:
    """The submission id in its one accepted spelling (lowercase, hyphenated UUID), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return str(parsed) if str(parsed) == value else None


def utc_now_text() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Submission:
    submission_id: str
    parameters: dict[str, Any]
    user: str
    submitted_at: str
    template: str = "class3d"
    version: int = SCHEMA_VERSION
    dry_run: bool = False
    params: JobParams = field(init=False, repr=False, compare=False)
    """The validated job parameters (set by ``__post_init__``)."""

    def __post_init__(self) -> None:
        sid = self.submission_id
        if canonical_id(sid) is None:
            raise InvalidSubmission(f"{KEY} = {_shown(sid)} is not valid: {ID_ACCEPTED}")
        if isinstance(self.version, bool) or self.version != SCHEMA_VERSION:
            raise InvalidSubmission(
                f"version = {_shown(self.version)} is not supported: {SCHEMA_VERSION}", sid
            )
        if self.template not in TEMPLATES:
            raise InvalidSubmission(
                f"template = {_shown(self.template)} is not valid: one of {', '.join(TEMPLATES)}",
                sid,
            )
        user = self.user
        if (
            not isinstance(user, str)
            or not user.strip()
            or len(user) > MAX_USER_CHARS
            or not user.isprintable()
        ):
            raise InvalidSubmission(
                f"user = {_shown(user)} is not valid: a name of 1 to {MAX_USER_CHARS} printable "
                "characters",
                sid,
            )
        _check_time(self.submitted_at, sid)
        if not isinstance(self.dry_run, bool):
            raise InvalidSubmission(
                f"dry_run = {_shown(self.dry_run)} is not valid: true or false", sid
            )
        if not isinstance(self.parameters, Mapping) or not all(
            isinstance(k, str) for k in self.parameters
        ):
            raise InvalidSubmission(
                f"parameters = {_shown(self.parameters)} is not valid: a JSON object of job "
                "parameters (names of relion_spot.jobs.parameters.Class3dParams)",
                sid,
            )
        try:
            params: JobParams
            if self.template == "stage":
                params = stage_from_mapping(self.parameters)
            elif self.template == "select":
                params = select_from_mapping(self.parameters)
            elif self.template == "synthetic":
                params = synthetic_from_mapping(self.parameters)
            elif self.template == "campaign":
                params = campaign_from_mapping(self.parameters, sid)
            elif self.template == "export":
                params = export_from_mapping(self.parameters)
            elif self.template == "import":
                params = import_from_mapping(self.parameters)
            else:
                params = from_mapping(self.parameters)
                params.check_confined()
        except JobParameterError as err:
            raise InvalidSubmission(str(err), sid) from None
        except (TypeError, ValueError, AttributeError) as err:  # a shape no check foresaw
            raise InvalidSubmission(f"parameters are not valid: {err}", sid) from None
        object.__setattr__(self, "params", params)

    def to_json(self) -> str:
        fields: dict[str, Any] = {
            "version": self.version,
            KEY: self.submission_id,
            "template": self.template,
            "parameters": self.parameters,
            "user": self.user,
            "submitted_at": self.submitted_at,
        }
        if self.dry_run:
            fields["dry_run"] = True
        return json.dumps(fields, sort_keys=True)


def _check_time(value: object, sid: str) -> None:
    accepted = "an ISO 8601 time with a time zone, e.g. 2026-11-03T10:15:00Z"
    if not isinstance(value, str):
        raise InvalidSubmission(f"submitted_at = {_shown(value)} is not valid: {accepted}", sid)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidSubmission(
            f"submitted_at = {_shown(value)} is not valid: {accepted}", sid
        ) from None
    if when.tzinfo is None:
        raise InvalidSubmission(f"submitted_at = {_shown(value)} is not valid: {accepted}", sid)


def new_submission(
    parameters: Mapping[str, Any],
    *,
    user: str,
    template: str = "class3d",
    submission_id: str | None = None,
    submitted_at: str | None = None,
    dry_run: bool = False,
) -> Submission:
    """A validated submission with a fresh id (unless one is given, e.g. by a retrying client)."""
    return Submission(
        submission_id=submission_id or str(uuid.uuid4()),
        parameters=dict(parameters),
        user=user,
        submitted_at=submitted_at or utc_now_text(),
        template=template,
        dry_run=dry_run,
    )


def parse(body: str) -> Submission:
    """The submission a queue message carries; InvalidSubmission says what is wrong with it."""
    data = _load(body)
    if not isinstance(data, dict):
        raise InvalidSubmission(
            f"the message is a JSON {type(data).__name__}, not an object with the fields "
            f"{', '.join(FIELDS)}"
        )
    sid = canonical_id(data.get(KEY))
    if sid is None:
        raise InvalidSubmission(f"{KEY} = {_shown(data.get(KEY))} is not valid: {ID_ACCEPTED}")
    unknown = sorted(set(data) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise InvalidSubmission(
            f"field {unknown[0]!r} is not known; the fields are: {', '.join(FIELDS)}", sid
        )
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise InvalidSubmission(
            f"field {missing[0]!r} is missing; the fields are: {', '.join(FIELDS)}", sid
        )
    return Submission(
        submission_id=sid,
        parameters=data["parameters"],
        user=data["user"],
        submitted_at=data["submitted_at"],
        template=data["template"],
        version=data["version"],
        dry_run=data.get("dry_run", False),
    )


@dataclass(frozen=True)
class CancelRequest:
    """A request to cancel the Slurm job of an accepted submission."""

    submission_id: str
    job_id: str
    user: str
    submitted_at: str
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        sid = self.submission_id
        if canonical_id(sid) is None:
            raise InvalidSubmission(f"{KEY} = {_shown(sid)} is not valid: {ID_ACCEPTED}")
        if isinstance(self.version, bool) or self.version != SCHEMA_VERSION:
            raise InvalidSubmission(
                f"version = {_shown(self.version)} is not supported: {SCHEMA_VERSION}", sid
            )
        if not isinstance(self.job_id, str) or not self.job_id.isdigit():
            raise InvalidSubmission(
                f"job_id = {_shown(self.job_id)} is not valid: a Slurm job id (digits)", sid
            )
        if not isinstance(self.user, str) or not self.user.strip():
            raise InvalidSubmission(f"user = {_shown(self.user)} is not valid: a name", sid)
        _check_time(self.submitted_at, sid)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                ACTION: CANCEL,
                KEY: self.submission_id,
                "job_id": self.job_id,
                "user": self.user,
                "submitted_at": self.submitted_at,
            },
            sort_keys=True,
        )


def new_cancel(submission_id: str, job_id: str, *, user: str) -> CancelRequest:
    return CancelRequest(
        submission_id=submission_id, job_id=job_id, user=user, submitted_at=utc_now_text()
    )


def parse_request(body: str) -> Submission | CancelRequest:
    """What a queue message asks for: a submission (no ``action``, or "submit") or a cancel.
    InvalidSubmission says what is wrong with it."""
    data = _load(body)
    if not isinstance(data, dict) or ACTION not in data:
        return parse(body)
    action = data.pop(ACTION)
    if action == SUBMIT:
        return parse(json.dumps(data))
    try:
        return _cancel_request(action, data)
    except InvalidSubmission as err:
        # Never recorded against the submission (its decision stands): logged and dropped.
        raise InvalidSubmission(f"cancel request: {err}") from None


def _cancel_request(action: object, data: dict[str, Any]) -> CancelRequest:
    if action != CANCEL:
        raise InvalidSubmission(
            f"{ACTION} = {_shown(action)} is not valid: one of {SUBMIT}, {CANCEL}"
        )
    sid = canonical_id(data.get(KEY))
    if sid is None:
        raise InvalidSubmission(f"{KEY} = {_shown(data.get(KEY))} is not valid: {ID_ACCEPTED}")
    names = [n for n in CANCEL_FIELDS if n != ACTION]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidSubmission(
            f"field {unknown[0]!r} is not known; the fields are: {', '.join(CANCEL_FIELDS)}"
        )
    missing = [n for n in names if n not in data]
    if missing:
        raise InvalidSubmission(
            f"field {missing[0]!r} is missing; the fields are: {', '.join(CANCEL_FIELDS)}"
        )
    return CancelRequest(
        submission_id=sid,
        job_id=data["job_id"],
        user=data["user"],
        submitted_at=data["submitted_at"],
        version=data["version"],
    )
