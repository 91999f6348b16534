"""A cancel counts from the submitter or from a lab admin: the drainer knows an admin by the IAM
unique id in the message's SenderId (the stack's admin role, given as ADMIN_IDS_ENV), which SQS
sets from the sender's credentials; the ``user`` field of a cancel is free text and counts for
nothing."""

from __future__ import annotations

from typing import Any

import pytest

from relion_spot.intake.config import ADMIN_IDS_ENV, QUEUE_URL_ENV, TABLE_ENV
from relion_spot.intake.drain import DrainSettings, IntakeConfigError
from relion_spot.intake.message import new_cancel
from relion_spot.slurm.spec import SPEC_ENV
from tests.intake.conftest import cluster_spec

from .conftest import Cluster
from .test_commands import _accepted, _status_json

ADMIN_ROLE_ID = "AROAADMINROLE0000001"
OTHER_ROLE_ID = "AROAOTHERROLE0000002"


def _settings(admin_ids: str) -> DrainSettings:
    return DrainSettings.from_env(
        {
            QUEUE_URL_ENV: "https://sqs.us-east-1.amazonaws.com/1/q",
            TABLE_ENV: "t",
            SPEC_ENV: cluster_spec().to_json(),
            ADMIN_IDS_ENV: admin_ids,
        }
    )


def _deliver_cancel(cluster: Cluster, sid: str, job: str, sender: str, **drainer: Any) -> str:
    """The cancel as SQS hands it to the drainer, with ``sender`` as the SenderId."""
    request = new_cancel(sid, job, user="alice")  # claims to be the submitter
    cluster.sqs.send_message(QueueUrl=cluster.queue_url, MessageBody=request.to_json())
    (message,) = cluster.sqs.receive_message(QueueUrl=cluster.queue_url)["Messages"]
    message["Attributes"] = {"SenderId": sender}
    return cluster.drainer(**drainer).handle(message)


def test_an_admin_roles_cancel_stops_anyones_job_and_says_who(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    admins = _settings(f" {ADMIN_ROLE_ID} ,").admin_ids
    outcome = _deliver_cancel(
        cluster, row["submission_id"], job, f"{ADMIN_ROLE_ID}:carol", admin_ids=admins
    )
    assert outcome == "cancelled"
    assert cluster.scancel_calls() == [job]
    (row,) = _status_json(capsys, job)
    assert row["state"] == "cancelled"
    assert row["message"] == f"cancelled by a lab admin ({ADMIN_ROLE_ID}:carol)"


def test_a_cancel_from_any_other_principal_is_dropped(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    admins = frozenset({ADMIN_ROLE_ID})
    for sender in (
        f"{OTHER_ROLE_ID}:carol",  # another role, whatever its session is called
        f"{OTHER_ROLE_ID}:{ADMIN_ROLE_ID}",  # the admin id as a session name
        "AIDAOTHERLABMEMBER01",  # another member's user
        "",  # no SenderId at all
    ):
        assert _deliver_cancel(cluster, row["submission_id"], job, sender, admin_ids=admins) == (
            "cancel-ignored"
        ), sender
    # Without the admin ids, the admin role is just another principal.
    assert _deliver_cancel(cluster, row["submission_id"], job, f"{ADMIN_ROLE_ID}:c") == (
        "cancel-ignored"
    )
    assert cluster.scancel_calls() == []
    assert cluster.table.get(row["submission_id"]).cancel_state == ""


@pytest.mark.parametrize("value", ["arn:aws:iam::111111111111:role/admin", "AROA*", "aroa1234"])
def test_an_admin_setting_that_is_not_a_unique_id_is_refused(value: str) -> None:
    with pytest.raises(IntakeConfigError, match=f"{ADMIN_IDS_ENV}: .* is not an IAM unique id"):
        _settings(value)


def test_the_admin_setting_reaches_the_drainer(cluster: Cluster) -> None:
    assert _settings("").admin_ids == frozenset()
    built = _settings(f"{ADMIN_ROLE_ID},{OTHER_ROLE_ID}").drainer(
        sqs=cluster.sqs, dynamodb=cluster.dynamodb, wait_seconds=0
    )
    assert built.admin_ids == {ADMIN_ROLE_ID, OTHER_ROLE_ID}
