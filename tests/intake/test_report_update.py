"""The node's report forwarder's one UpdateItem (relion_spot.intake.report.report_update): it
names only what the node roles may name and asks nothing back (the IAM matrix, tests/iam,
judges the same call against the synthesized policies), and it lands only in the item whose
``report_job_id`` the drainer wrote for the reporting job."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from relion_spot.intake.config import KEY, REPORT_ATTRIBUTES, REPORT_RETURN_VALUES
from relion_spot.intake.report import JobReport, ReportPublisher, compact, report_update
from relion_spot.intake.table import (
    ACCEPTED,
    CONTROLLER_ATTRIBUTES,
    IntakeTable,
    Record,
    create_table,
)

TABLE = "intake"
SID = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
REPORT = JobReport(compact({"current_iteration": 3}, state="RUNNING"), "it 3\n")


def test_the_update_names_only_the_reports_attributes_and_asks_nothing_back() -> None:
    request = report_update(TABLE, SID, "42", REPORT)
    named = {*request["Key"], *request["ExpressionAttributeNames"].values()}
    assert named <= set(REPORT_ATTRIBUTES)
    assert not named & set(CONTROLLER_ATTRIBUTES), "the decision is the controller's"
    assert request["ReturnValues"] == REPORT_RETURN_VALUES == "NONE"
    assert "ReturnValuesOnConditionCheckFailure" not in request
    assert request["ExpressionAttributeValues"][":j"] == {"S": "42"}


@pytest.fixture
def table(moto_aws: None) -> IntakeTable:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client, TABLE)
    return IntakeTable(client, TABLE)


def _item(table: IntakeTable) -> dict[str, Any]:
    return table.client.get_item(TableName=TABLE, Key={KEY: {"S": SID}})["Item"]


def test_a_report_lands_in_the_item_the_drainer_accepted_for_that_job(table: IntakeTable) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", sender_id="AROAX:alice", decided_at=1))
    decided = _item(table)
    publisher = ReportPublisher(table=TABLE, region="us-east-1", client=table.client)
    assert publisher.publish(SID, "42", REPORT)
    item = _item(table)
    assert item["progress"]["M"]["job_id"] == {"S": "42"}
    assert item["log_tail"] == {"S": "it 3\n"}
    assert {k: v for k, v in item.items() if k not in ("progress", "log_tail")} == decided


def test_a_report_of_another_job_is_refused(table: IntakeTable) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    publisher = ReportPublisher(table=TABLE, region="us-east-1", client=table.client)
    assert not publisher.publish(SID, "43", REPORT)
    assert not publisher.publish("0f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b", "42", REPORT)
    assert "progress" not in _item(table)


def test_an_item_naming_the_job_only_in_job_id_takes_no_report(table: IntakeTable) -> None:
    """The gate is report_job_id alone: the forwarder's condition never reads job_id, which the
    node roles may not name."""
    table.client.put_item(
        TableName=TABLE, Item={KEY: {"S": SID}, "state": {"S": ACCEPTED}, "job_id": {"S": "42"}}
    )
    publisher = ReportPublisher(table=TABLE, region="us-east-1", client=table.client)
    assert not publisher.publish(SID, "42", REPORT)
