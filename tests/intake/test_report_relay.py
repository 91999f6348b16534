"""A job's report on its way to its submission: the node puts it into its own item (keyed by
its instance ARN, all IAM lets it put: tests/iam judges the same call), and the controller's
relay copies it into the submission's item only for the job Slurm runs on that instance, and
only where the drainer's decision names that job."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from relion_spot.intake.config import (
    KEY,
    REPORT_ATTRIBUTES,
    REPORT_RETURN_VALUES,
    REPORT_TTL_SECONDS,
    report_key,
)
from relion_spot.intake.relay import (
    Relay,
    ReportedJob,
    main,
    relay_update,
    reported_jobs,
)
from relion_spot.intake.report import (
    JobReport,
    ReportError,
    ReportPublisher,
    compact,
    instance_arn,
    report_put,
)
from relion_spot.intake.table import (
    ACCEPTED,
    CONTROLLER_ATTRIBUTES,
    IntakeTable,
    Record,
    create_table,
)
from relion_spot.slurm import node_states
from relion_spot.slurm.squeue import SlurmJob

TABLE = "intake"
SID = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
OTHER_SID = "0f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
PREFIX = "arn:aws:ec2:us-east-1:123456789012:instance/"
NODE = PREFIX + "i-0123456789abcdef0"
OTHER_NODE = PREFIX + "i-0fedcba9876543210"
REPORT = JobReport(compact({"current_iteration": 3}, state="RUNNING"), "it 3\n")
NOW = 1_800_000_000


def test_the_put_names_only_the_reports_attributes_under_the_nodes_own_key() -> None:
    request = report_put(TABLE, NODE, SID, "42", REPORT, NOW + 5)
    item = request["Item"]
    assert set(item) == set(REPORT_ATTRIBUTES)
    assert not set(item) & set(CONTROLLER_ATTRIBUTES), "the decision is the controller's"
    assert item[KEY] == {"S": f"report:{NODE}:{SID}"} == {"S": report_key(NODE, SID)}
    assert item["report_job_id"] == {"S": "42"}
    assert item["expires_at"] == {"N": str(NOW + 5)}
    assert item["progress"]["M"]["job_id"] == {"S": "42"}
    assert request["ReturnValues"] == REPORT_RETURN_VALUES == "NONE"
    assert "ConditionExpression" not in request


class _Metadata:
    """What a metadata service answers (a stand-in for IMDS: paths to text)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def get(self, path: str) -> str | None:
        return self.answers.get(path)


METADATA = {
    "services/partition": "aws-us-gov",
    "placement/region": "us-gov-west-1",
    "instance-id": "i-0abc",
    "identity-credentials/ec2/info": json.dumps({"Code": "Success", "AccountId": "210987654321"}),
}


def test_the_nodes_arn_comes_from_its_metadata_and_a_missing_part_is_named() -> None:
    assert instance_arn(_Metadata(METADATA)) == (
        "arn:aws-us-gov:ec2:us-gov-west-1:210987654321:instance/i-0abc"
    )
    partial = {k: v for k, v in METADATA.items() if k != "placement/region"}
    partial["identity-credentials/ec2/info"] = "not json"
    with pytest.raises(ReportError, match="names no account, region"):
        instance_arn(_Metadata(partial))


@pytest.fixture
def table(moto_aws: None) -> IntakeTable:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client, TABLE)
    return IntakeTable(client, TABLE)


def _item(table: IntakeTable, key: str = SID) -> dict[str, Any]:
    return table.client.get_item(TableName=TABLE, Key={KEY: {"S": key}}).get("Item", {})


def _put(table: IntakeTable, node: str, sid: str, job: str, report: JobReport = REPORT) -> None:
    ReportPublisher(table=TABLE, instance_arn=node, client=table.client, clock=lambda: NOW).publish(
        sid, job, report
    )


def _relay(table: IntakeTable, *jobs: ReportedJob) -> Relay:
    return Relay(table=TABLE, client=table.client, jobs=lambda: list(jobs))


def test_a_report_reaches_the_item_the_drainer_accepted_for_that_job(table: IntakeTable) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", sender_id="AROAX:alice", decided_at=1))
    decided = _item(table)
    _put(table, NODE, SID, "42")
    assert "progress" not in _item(table), "the node writes only its own item"
    report = _item(table, report_key(NODE, SID))
    assert int(report["expires_at"]["N"]) == NOW + REPORT_TTL_SECONDS
    relay = _relay(table, ReportedJob("42", SID, NODE))
    assert relay.round() == 1
    item = _item(table)
    assert item["progress"]["M"]["job_id"] == {"S": "42"}
    assert item["log_tail"] == {"S": "it 3\n"}
    assert {k: v for k, v in item.items() if k not in ("progress", "log_tail")} == decided
    assert relay.round() == 0, "an unchanged report is not copied again"
    _put(table, NODE, SID, "42", JobReport(compact({"current_iteration": 4}, state="RUNNING"), ""))
    assert relay.round() == 1
    assert _item(table)["progress"]["M"]["current_iteration"] == {"N": "4"}


def test_a_report_from_a_node_the_job_does_not_run_on_is_never_read(table: IntakeTable) -> None:
    """Another node (root there) writes a report for a job it does not run: its own item."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    _put(table, OTHER_NODE, SID, "42")
    assert _relay(table, ReportedJob("42", SID, NODE)).round() == 0
    assert "progress" not in _item(table)


def test_a_report_for_another_submission_is_refused_and_that_item_kept(
    table: IntakeTable, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose comment names another submission: the relay's update is conditioned on the
    item's report_job_id, which the drainer wrote for its own job."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    _put(table, NODE, SID, "43")
    _put(table, NODE, OTHER_SID, "42")
    relay = _relay(table, ReportedJob("43", SID, NODE), ReportedJob("42", OTHER_SID, NODE))
    relay.round()
    assert "progress" not in _item(table)
    assert _item(table, OTHER_SID) == {}, "no relay creates a submission's item"
    assert f"job 43: report not relayed: submission {SID} holds another job" in caplog.text


def test_a_report_item_of_another_job_is_not_copied(table: IntakeTable) -> None:
    """The node's item for the submission names job 41 (the job's earlier attempt, or a
    forgery): the relay copies only the job Slurm lists."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    _put(table, NODE, SID, "41")
    assert _relay(table, ReportedJob("42", SID, NODE)).round() == 0
    assert "progress" not in _item(table)


def test_an_item_naming_the_job_only_in_job_id_takes_no_report(table: IntakeTable) -> None:
    """The gate is report_job_id alone."""
    table.client.put_item(
        TableName=TABLE, Item={KEY: {"S": SID}, "state": {"S": ACCEPTED}, "job_id": {"S": "42"}}
    )
    _put(table, NODE, SID, "42")
    _relay(table, ReportedJob("42", SID, NODE)).round()
    assert "progress" not in _item(table)


def test_the_relay_update_names_the_reports_attributes_and_asks_nothing_back() -> None:
    item = report_put(TABLE, NODE, SID, "42", REPORT, NOW)["Item"]
    request = relay_update(TABLE, ReportedJob("42", SID, NODE), item)
    assert request["Key"] == {KEY: {"S": SID}}
    assert sorted(request["ExpressionAttributeNames"].values()) == sorted(
        [KEY, "progress", "log_tail", "report_job_id"]
    )
    assert request["ReturnValues"] == "NONE"


def _job(job_id: str, comment: str, nodes: tuple[str, ...], state: str = "RUNNING") -> SlurmJob:
    return SlurmJob(
        job_id=job_id,
        states=frozenset({state}),
        partition="gpu",
        node_count=max(1, len(nodes)),
        nodes=nodes,
        start_time=1,
        state=state,
        comment=comment,
    )


def test_each_intake_job_is_read_from_its_batch_nodes_instance() -> None:
    jobs = [
        _job("41", f"relion-spot:{OTHER_SID}", ("gpu-2",), state="COMPLETED"),
        _job("42", f"relion-spot:{SID}", ("gpu-1", "gpu-2")),
        _job("43", "relion-spot-image:relion.sif", ("cpu-1",)),  # not a submission's job
        _job("44", f"relion-spot:{SID}", ()),  # pending: no node yet
        _job("45", f"relion-spot:{SID}", ("gpu-3",)),  # no instance recorded for gpu-3
    ]
    instances = {"gpu-1": "i-0123456789abcdef0", "gpu-2": "i-0fedcba9876543210", "cpu-1": "i-1"}
    assert reported_jobs(jobs, instances, PREFIX) == [
        ReportedJob("41", OTHER_SID, OTHER_NODE),
        ReportedJob("42", SID, NODE),
    ]


def test_slurm_names_the_instance_each_node_is() -> None:
    answer = {
        "nodes": [
            {"name": "gpu-1", "state": ["IDLE"], "instance_id": "i-0123456789abcdef0"},
            {"name": "gpu-2", "state": ["IDLE", "CLOUD", "POWERED_DOWN"], "instance_id": ""},
            {"name": "gpu-3", "state": ["IDLE", "CLOUD", "POWERED_DOWN"]},
        ]
    }
    parsed = node_states.parse(json.dumps(answer))
    assert [(n.name, n.instance_id) for n in parsed] == [
        ("gpu-1", "i-0123456789abcdef0"),
        ("gpu-2", ""),
        ("gpu-3", ""),
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELION_SPOT_INSTANCE_ARN_PREFIX": "i-"}, "give arn:<partition>:ec2:<region>"),
        (
            {"RELION_SPOT_INSTANCE_ARN_PREFIX": PREFIX, "RELION_SPOT_REPORT_POLL_SECONDS": "0"},
            "give seconds from 0.1 to 300",
        ),
    ],
)
def test_a_bad_setting_is_named_and_nothing_runs(
    env: dict[str, str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main({"RELION_SPOT_INTAKE_TABLE": TABLE, **env}) == 2
    assert message in caplog.text
