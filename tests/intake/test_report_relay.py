"""A job's report on its way to its submission: the node puts it into its own item (keyed by
its instance ARN, all IAM lets it put: tests/iam judges the same call), and the controller's
relay copies it into the submission's item only for the job Slurm runs on that instance, and
only where the drainer's decision names that job."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from relion_spot import tags
from relion_spot.intake.config import (
    KEY,
    REPORT_ATTRIBUTES,
    REPORT_RETURN_VALUES,
    REPORT_TTL_SECONDS,
    report_key,
)
from relion_spot.intake.relay import (
    Relay,
    listed_jobs,
    main,
    relay_update,
    tagged_instances,
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
from relion_spot.slurm.squeue import SlurmJob

TABLE = "intake"
CLUSTER = "lab-gpu1"
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


class Cloud:
    """The cluster's instances in moto, each tagged with its node name as the resume program
    tags it, and Slurm's job list as the relay reads it."""

    def __init__(self) -> None:
        self.ec2 = boto3.client("ec2", region_name="us-east-1")
        self.slurm: list[SlurmJob] = []

    def launch(self, node: str, cluster: str = CLUSTER) -> str:
        image = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        (instance,) = self.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
        tagged = [{"Key": tags.CLUSTER, "Value": cluster}, {"Key": tags.NODE, "Value": node}]
        self.ec2.create_tags(Resources=[instance["InstanceId"]], Tags=tagged)
        return PREFIX + str(instance["InstanceId"])

    def end(self, arn: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[arn.removeprefix(PREFIX)])

    def relay(self, table: IntakeTable) -> Relay:
        return Relay(
            table=TABLE,
            client=table.client,
            jobs=lambda: list(self.slurm),
            instances=tagged_instances(self.ec2, CLUSTER),
            arn_prefix=PREFIX,
        )


@pytest.fixture
def cloud(table: IntakeTable) -> Cloud:
    return Cloud()


def _item(table: IntakeTable, key: str = SID) -> dict[str, Any]:
    return table.client.get_item(TableName=TABLE, Key={KEY: {"S": key}}).get("Item", {})


def _put(table: IntakeTable, node: str, sid: str, job: str, report: JobReport = REPORT) -> None:
    ReportPublisher(table=TABLE, instance_arn=node, client=table.client, clock=lambda: NOW).publish(
        sid, job, report
    )


def _job(
    job_id: str,
    sid: str,
    node: str = "gpu-1",
    *,
    state: str = "RUNNING",
    restarts: int = 0,
    comment: str | None = None,
) -> SlurmJob:
    return SlurmJob(
        job_id=job_id,
        states=frozenset({state}),
        partition="gpu",
        node_count=1,
        nodes=(node,) if node else (),
        start_time=1,
        state=state,
        comment=f"relion-spot:{sid}" if comment is None else comment,
        restarts=restarts,
        batch_host=node,
    )


def test_a_report_reaches_the_item_the_drainer_accepted_for_that_job(
    table: IntakeTable, cloud: Cloud
) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", sender_id="AROAX:alice", decided_at=1))
    decided = _item(table)
    node = cloud.launch("gpu-1")
    _put(table, node, SID, "42")
    assert "progress" not in _item(table), "the node writes only its own item"
    report = _item(table, report_key(node, SID))
    assert int(report["expires_at"]["N"]) == NOW + REPORT_TTL_SECONDS
    cloud.slurm = [_job("42", SID)]
    relay = cloud.relay(table)
    assert relay.round() == 1
    item = _item(table)
    assert item["progress"]["M"]["job_id"] == {"S": "42"}
    assert item["log_tail"] == {"S": "it 3\n"}
    assert {k: v for k, v in item.items() if k not in ("progress", "log_tail")} == decided
    assert relay.round() == 0, "an unchanged report is not copied again"
    _put(table, node, SID, "42", JobReport(compact({"current_iteration": 4}, state="RUNNING"), ""))
    assert relay.round() == 1
    assert _item(table)["progress"]["M"]["current_iteration"] == {"N": "4"}
    # The job's last word after it ended, from the instance it ran on.
    cloud.slurm = [_job("42", SID, state="COMPLETED")]
    _put(table, node, SID, "42", JobReport(compact({}, state="FINISHED"), "done\n"))
    assert relay.round() == 1
    assert _item(table)["log_tail"] == {"S": "done\n"}


def test_a_report_from_a_node_the_job_does_not_run_on_is_never_read(
    table: IntakeTable, cloud: Cloud
) -> None:
    """Another node (root there, and so a Slurm admin) writes a report for a job it does not
    run: its own item, which the relay never reads for that job."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    cloud.launch("gpu-1")
    other = cloud.launch("gpu-2")
    _put(table, other, SID, "42")
    cloud.slurm = [_job("42", SID, "gpu-1")]
    assert cloud.relay(table).round() == 0
    assert "progress" not in _item(table)


def test_a_node_name_given_to_a_new_instance_never_speaks_for_the_ended_job(
    table: IntakeTable, cloud: Cloud
) -> None:
    """Job 42 ran on gpu-1 and ended; gpu-1 is relaunched as another instance, whose root puts
    a report for job 42: the relay still reads the instance the job ran on."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    first = cloud.launch("gpu-1")
    cloud.slurm = [_job("42", SID)]
    relay = cloud.relay(table)
    _put(table, first, SID, "42", JobReport(compact({}, state="FINISHED"), "done\n"))
    assert relay.round() == 1
    cloud.end(first)
    second = cloud.launch("gpu-1")
    cloud.slurm = [_job("42", SID, state="COMPLETED")]
    _put(table, second, SID, "42", JobReport(compact({}, state="FAILED"), "forged\n"))
    assert relay.round() == 0
    assert _item(table)["log_tail"] == {"S": "done\n"}
    # A job first seen after it ended has no instance the relay saw it run on: nothing read.
    fresh = cloud.relay(table)
    assert fresh.round() == 0 and fresh.pins == {}


def test_a_requeued_job_is_read_from_the_instance_of_its_new_attempt(
    table: IntakeTable, cloud: Cloud
) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    first = cloud.launch("gpu-1")
    cloud.slurm = [_job("42", SID)]
    relay = cloud.relay(table)
    relay.round()
    cloud.end(first)  # reclaimed: Slurm requeues the job and resumes it on a fresh instance
    cloud.slurm = [_job("42", SID, "", state="PENDING", restarts=1)]
    relay.round()
    second = cloud.launch("gpu-1")
    cloud.slurm = [_job("42", SID, restarts=1)]
    _put(table, second, SID, "42", JobReport(compact({"resumes": 1}, state="RUNNING"), ""))
    assert relay.round() == 1
    assert relay.pins == {("42", 1): second}
    assert _item(table)["progress"]["M"]["resumes"] == {"N": "1"}


def test_a_node_name_two_instances_carry_is_not_read_until_one_does(
    table: IntakeTable, cloud: Cloud
) -> None:
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    old, new = cloud.launch("gpu-1"), cloud.launch("gpu-1")
    _put(table, new, SID, "42")
    cloud.slurm = [_job("42", SID)]
    relay = cloud.relay(table)
    assert relay.round() == 0 and relay.pins == {}
    cloud.end(old)
    assert relay.round() == 1


def test_a_report_for_another_submission_is_refused_and_that_item_kept(
    table: IntakeTable, cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose comment names another submission: the relay's update is conditioned on the
    item's report_job_id, which the drainer wrote for its own job."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    node = cloud.launch("gpu-1")
    _put(table, node, SID, "43")
    _put(table, node, OTHER_SID, "42")
    cloud.slurm = [_job("43", SID), _job("42", OTHER_SID)]
    cloud.relay(table).round()
    assert "progress" not in _item(table)
    assert _item(table, OTHER_SID) == {}, "no relay creates a submission's item"
    assert f"job 43: report not relayed: submission {SID} holds another job" in caplog.text


def test_a_report_item_of_another_job_is_not_copied(table: IntakeTable, cloud: Cloud) -> None:
    """The node's item for the submission names job 41 (a forgery, or an older job): the relay
    copies only the job Slurm lists."""
    table.finish(Record(SID, ACCEPTED, job_id="42", decided_at=1))
    _put(table, cloud.launch("gpu-1"), SID, "41")
    cloud.slurm = [_job("42", SID)]
    assert cloud.relay(table).round() == 0
    assert "progress" not in _item(table)


def test_an_item_naming_the_job_only_in_job_id_takes_no_report(
    table: IntakeTable, cloud: Cloud
) -> None:
    """The gate is report_job_id alone."""
    table.client.put_item(
        TableName=TABLE, Item={KEY: {"S": SID}, "state": {"S": ACCEPTED}, "job_id": {"S": "42"}}
    )
    _put(table, cloud.launch("gpu-1"), SID, "42")
    cloud.slurm = [_job("42", SID)]
    cloud.relay(table).round()
    assert "progress" not in _item(table)


def test_only_intake_jobs_with_a_submission_in_its_one_spelling_are_relayed() -> None:
    jobs = [
        _job("41", OTHER_SID, "gpu-2", state="COMPLETED"),
        _job("42", SID),
        _job("43", "", "cpu-1", comment="relion-spot-image:relion.sif"),
        _job("44", SID.upper()),
        _job("45", "", comment=f"relion-spot:selftest:permissions:{SID}"),
        _job("46", SID, "", state="PENDING"),
    ]
    assert [(j.job_id, j.batch_node, j.running) for j in listed_jobs(jobs)] == [
        ("41", "gpu-2", False),
        ("42", "gpu-1", True),
        ("46", "", False),
    ]


def test_the_relay_update_names_the_reports_attributes_and_asks_nothing_back() -> None:
    item = report_put(TABLE, NODE, SID, "42", REPORT, NOW)["Item"]
    (job,) = listed_jobs([_job("42", SID)])
    request = relay_update(TABLE, job, item["progress"], item["log_tail"])
    assert request["Key"] == {KEY: {"S": SID}}
    assert sorted(request["ExpressionAttributeNames"].values()) == sorted(
        [KEY, "progress", "log_tail", "report_job_id"]
    )
    assert request["ReturnValues"] == "NONE"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELION_SPOT_INSTANCE_ARN_PREFIX": "i-"}, "give arn:<partition>:ec2:<region>"),
        ({"RELION_SPOT_INSTANCE_ARN_PREFIX": PREFIX}, "RELION_SPOT_CLUSTER is empty"),
        (
            {
                "RELION_SPOT_INSTANCE_ARN_PREFIX": PREFIX,
                "RELION_SPOT_CLUSTER": CLUSTER,
                "RELION_SPOT_REPORT_POLL_SECONDS": "0",
            },
            "give seconds from 0.1 to 300",
        ),
    ],
)
def test_a_bad_setting_is_named_and_nothing_runs(
    env: dict[str, str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main({"RELION_SPOT_INTAKE_TABLE": TABLE, **env}) == 2
    assert message in caplog.text
