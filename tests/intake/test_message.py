"""The submission message: what round-trips, and one clear refusal for each thing that can be
wrong with it."""

from __future__ import annotations

import json
import uuid

import pytest

from relion_spot.intake.client import submit
from relion_spot.intake.message import InvalidSubmission, new_submission, parse

SID = "7d9f4c1e-0a53-4c55-9b7e-2f7c2b1f6a10"


def _body(**changes: object) -> str:
    message: dict[str, object] = {
        "version": 1,
        "submission_id": SID,
        "template": "class3d",
        "parameters": {"preset": "benchmark", "K": 4},
        "user": "alice",
        "submitted_at": "2026-11-03T10:15:00Z",
    }
    for key, value in changes.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    return json.dumps(message)


def test_a_submission_round_trips_through_its_json() -> None:
    own_data = {"project_dir": "/data/lab", "particles": "Extract/job007/particles.star",
                "reference": "InitialModel/job009/run_it100_class001.mrc",
                "particle_diameter": 200}  # fmt: skip
    sent = new_submission(
        {**own_data, "K": 4, "iter": "30", "extra_flags": ["--pad", "1"]}, user="alice"
    )
    assert uuid.UUID(sent.submission_id).version == 4
    received = parse(sent.to_json())
    assert received == sent
    assert received.params.K == 4
    assert received.params.iter == 30
    assert received.params.extra_flags == ("--pad", "1")
    assert received.params.particles == "Extract/job007/particles.star"
    assert json.loads(sent.to_json())["version"] == 1


def test_a_dry_run_travels_as_an_optional_field_and_must_be_a_boolean() -> None:
    plain = new_submission({"preset": "benchmark"}, user="alice")
    assert "dry_run" not in json.loads(plain.to_json())
    dry = new_submission({"preset": "benchmark"}, user="alice", dry_run=True)
    assert parse(dry.to_json()).dry_run is True
    body = {**json.loads(dry.to_json()), "dry_run": 1}
    with pytest.raises(InvalidSubmission, match=r"^dry_run = 1 is not valid: true or false"):
        parse(json.dumps(body))


def test_a_submission_that_names_no_data_is_refused_not_run_on_the_benchmarks() -> None:
    with pytest.raises(InvalidSubmission) as refused:
        new_submission({"K": 4, "particles": "p.star"}, user="alice")
    assert str(refused.value) == (
        "the job's own data must be named: project_dir (--project-dir), reference "
        "(--reference), particle_diameter (--particle-diameter) missing; or give "
        "preset=benchmark (--preset benchmark) for the EMPIAR-10028 benchmark's"
    )
    with pytest.raises(InvalidSubmission, match=r"parameter preset = 'bench' is not valid: one"):
        new_submission({"preset": "bench"}, user="alice")
    benchmark = new_submission({"preset": "benchmark"}, user="alice").params
    assert (benchmark.particles, benchmark.project_dir) == (
        "Particles/shiny_2sets.star", "/data/relion_benchmark",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message", "has_id"),
    [
        ("not json", "the message is not JSON (Expecting value at char 0)", False),
        ("[1, 2]", "the message is a JSON list, not an object with the fields version, ", False),
        (
            _body(submission_id="7D9F4C1E-0A53-4C55-9B7E-2F7C2B1F6A10"),
            "submission_id = '7D9F4C1E-0A53-4C55-9B7E-2F7C2B1F6A10' is not valid: a UUID in "
            "lowercase with hyphens",
            False,
        ),
        (_body(submission_id=None), "submission_id = None is not valid", False),
        (_body(colour="blue"), "field 'colour' is not known; the fields are: version, ", True),
        (_body(user=None), "field 'user' is missing; the fields are: ", True),
        (_body(version=2), "version = 2 is not supported: 1", True),
        (_body(template="refine3d"), "template = 'refine3d' is not valid: one of class3d", True),
        (_body(user=""), "user = '' is not valid: a name of 1 to 128 printable characters", True),
        (
            _body(submitted_at="2026-11-03T10:15:00"),
            "submitted_at = '2026-11-03T10:15:00' is not valid: an ISO 8601 time with a time zone",
            True,
        ),
        (
            _body(parameters="K=4"),
            "parameters = 'K=4' is not valid: a JSON object of job parameters",
            True,
        ),
        (
            _body(parameters={"K": 0}),
            "parameter K = 0 is not valid: a whole number from 1 to 50",
            True,
        ),
        (
            _body(parameters={"iters": 5}),
            "no job parameter 'iters'; did you mean iter? parameters are: particles, ",
            True,
        ),
        (
            _body(parameters={"extra_flags": ["--gpu"]}),
            "parameter extra_flags: --gpu may not be given here: the job template sets it",
            True,
        ),
    ],
)
def test_each_mistake_is_one_message_naming_value_and_what_is_accepted(
    body: str, message: str, has_id: bool
) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        parse(body)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert refused.value.submission_id == (SID if has_id else None)


def test_the_client_refuses_a_bad_submission_before_sending_anything() -> None:
    class NoQueue:
        def send_message(self, **_: object) -> None:
            raise AssertionError("nothing may be sent")

    with pytest.raises(InvalidSubmission, match="parameter K = 99 is not valid"):
        submit(NoQueue(), None, "https://queue", parameters={"K": 99}, user="alice")
