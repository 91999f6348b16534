"""The controller's permission check: every power-save call dry-run with the programs' own
parameters, each outcome classified and recorded where the CLI reads it.

moto answers EC2 ``DryRun`` for CreateFleet, TerminateInstances, CreateTags and
DescribeInstances, but before (and without) any IAM evaluation: there every call is allowed, so
the allowed path, the parameters and "nothing launched" are tested against moto, and a denial is
EC2's own answer played by botocore's Stubber on the real client: an UnauthorizedOperation with an
encoded message, and STS's decoded policy evaluation (or STS refusing to decode).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from relion_spot import tags
from relion_spot.intake.table import create_table
from relion_spot.powersave import ec2 as fleet
from relion_spot.powersave.config import PowerSaveConfig
from relion_spot.selftest import check, record
from relion_spot.selftest.permissions import (
    ALLOWED,
    DENIED,
    ERROR,
    PLACEHOLDER_INSTANCE_ID,
    check_powersave,
    sts_decoder,
)

CLUSTER = "lab-gpu1"
TABLE = "lab-gpu1-intake"
REGION = "us-east-1"


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from moto import mock_aws

    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone)[
                "Subnet"
            ]["SubnetId"]
            for i, zone in enumerate(("us-east-1a", "us-east-1b"), start=1)
        ]
        templates = {
            name: ec2.create_launch_template(
                LaunchTemplateName=f"{CLUSTER}-{name}",
                LaunchTemplateData={"ImageId": "ami-0123456789abcdef0", "InstanceType": kind},
            )["LaunchTemplate"]["LaunchTemplateId"]
            for name, kind in (("gpu", "g5.xlarge"), ("cpu", "m6i.xlarge"))
        }
        env = {
            "AWS_DEFAULT_REGION": REGION,
            "RELION_SPOT_CLUSTER": CLUSTER,
            "RELION_SPOT_SUBNETS": ",".join(subnets),
            "RELION_SPOT_NODE_GROUPS": json.dumps(
                {
                    "gpu": {
                        "launch_template_id": templates["gpu"],
                        "instance_types": ["g5.xlarge", "g6.xlarge"],
                        "max_nodes": 4,
                        "gpus_per_node": 1,
                    },
                    "cpu": {
                        "launch_template_id": templates["cpu"],
                        "instance_types": ["m6i.xlarge"],
                        "max_nodes": 2,
                    },
                }
            ),
            "RELION_SPOT_INTAKE_TABLE": TABLE,
        }
        yield {"ec2": ec2, "env": env, "config": PowerSaveConfig.from_env(env)}


def _launch(ec2: Any, cluster: str) -> str:
    return ec2.run_instances(
        ImageId="ami-0123456789abcdef0",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": tags.CLUSTER, "Value": cluster}]}
        ],
    )["Instances"][0]["InstanceId"]


def test_every_call_is_dry_run_and_nothing_is_launched(account: dict[str, Any]) -> None:
    ec2 = account["ec2"]
    own = _launch(ec2, CLUSTER)
    _launch(ec2, "another-cluster")  # newer, but not this cluster's: never aimed at
    outcomes = check_powersave(ec2, account["config"])
    assert [(o.program, o.action) for o in outcomes] == [
        ("suspend", "ec2:DescribeInstances"),
        ("resume", "ec2:CreateFleet"),
        ("resume", "ec2:CreateFleet"),
        ("resume", "ec2:CreateTags"),
        ("suspend", "ec2:TerminateInstances"),
    ]
    assert {o.outcome for o in outcomes} == {ALLOWED}
    assert {o.code for o in outcomes} == {"DryRunOperation"}
    gpu = outcomes[1].target
    assert account["config"].groups["gpu"].launch_template_id in gpu
    assert "2 type(s) x 2 subnet(s)" in gpu and f"{tags.CLUSTER}={CLUSTER}" in gpu
    assert own in outcomes[3].target and own in outcomes[4].target
    # Dry runs only: no fleet, no third instance, the instance untouched and untagged.
    assert ec2.describe_fleets()["Fleets"] == []
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(instances) == 2
    assert {i["State"]["Name"] for i in instances} == {"running"}
    assert all(t["Key"] != tags.NODE for i in instances for t in i.get("Tags", []))


def test_no_instance_yet_is_aimed_at_a_placeholder(account: dict[str, Any]) -> None:
    outcomes = check_powersave(account["ec2"], account["config"])
    assert PLACEHOLDER_INSTANCE_ID in outcomes[-1].target
    assert "no instance of lab-gpu1 yet" in outcomes[-1].target


def _stubbed(_account: dict[str, Any]) -> tuple[Any, Stubber, Any, Stubber]:
    """Real clients whose answers are EC2's and STS's documented ones (moto's account is on)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    sts = boto3.client("sts", region_name=REGION)
    return ec2, Stubber(ec2), sts, Stubber(sts)


ENCODED = "AbCdEf0123-encoded"
DENIED_MESSAGE = (
    "You are not authorized to perform this operation. Encoded authorization failure message: "
    + ENCODED
)
DECODED = {
    "allowed": False,
    "explicitDeny": False,
    "matchedStatements": {"items": []},
    "failures": {"items": []},
    "context": {
        "principal": {"id": "AROAEXAMPLE:controller", "arn": "arn:aws:sts::1:assumed-role/c/x"},
        "action": "ec2:CreateFleet",
        "resource": "arn:aws:ec2:us-east-1:1:launch-template/lt-0123",
        "conditions": {
            "items": [
                {
                    "key": "aws:RequestTag/relion-spot:cluster",
                    "values": {"items": [{"value": CLUSTER}]},
                }
            ]
        },
    },
}


def _expect_dry_runs(
    ec2_stub: Stubber, config: PowerSaveConfig, fleet_error: tuple[str, str] | None
) -> None:
    allowed = ("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
    ec2_stub.add_client_error(
        "describe_instances", *allowed, expected_params={"DryRun": True, "Filters": ANY}
    )
    for group in config.groups.values():
        request = fleet.fleet_request(
            cluster=config.cluster,
            group=group,
            instance_types=group.instance_types,
            subnets=config.subnets,
            count=1,
        )
        code, message = fleet_error if group.partition == "gpu" and fleet_error else allowed
        ec2_stub.add_client_error(
            "create_fleet", code, message, expected_params={"DryRun": True, **request}
        )
    ec2_stub.add_response(
        "describe_instances",
        {"Reservations": []},
        {"Filters": [{"Name": f"tag:{tags.CLUSTER}", "Values": [CLUSTER]}]},
    )
    ec2_stub.add_client_error("create_tags", *allowed)
    ec2_stub.add_client_error(
        "terminate_instances",
        *allowed,
        expected_params={"DryRun": True, "InstanceIds": [PLACEHOLDER_INSTANCE_ID]},
    )


def test_a_wrong_policy_is_reported_with_its_decoded_reason(account: dict[str, Any]) -> None:
    """The launch denied on purpose (a policy that forgot the cluster's launch template): the
    CreateFleet outcome names the action, the resource, that no policy allows it and the tag
    the request carried; the other calls stay allowed."""
    config = account["config"]
    ec2, ec2_stub, sts, sts_stub = _stubbed(account)
    denied = DENIED_MESSAGE
    _expect_dry_runs(ec2_stub, config, ("UnauthorizedOperation", denied))
    sts_stub.add_response(
        "decode_authorization_message",
        {"DecodedMessage": json.dumps(DECODED)},
        {"EncodedMessage": ENCODED},
    )
    with ec2_stub, sts_stub:
        outcomes = check_powersave(ec2, config, decode=sts_decoder(sts))
    ec2_stub.assert_no_pending_responses()
    sts_stub.assert_no_pending_responses()
    by_target = {(o.action, o.target.split(":")[0]): o for o in outcomes}
    gpu = by_target[("ec2:CreateFleet", "gpu")]
    assert (gpu.outcome, gpu.code) == (DENIED, "UnauthorizedOperation")
    assert gpu.reason == (
        "ec2:CreateFleet on arn:aws:ec2:us-east-1:1:launch-template/lt-0123, no policy allows "
        f"it, request carried aws:RequestTag/relion-spot:cluster={CLUSTER}"
    )
    assert [o.outcome for o in outcomes if o is not gpu] == [ALLOWED] * 4


def test_a_denial_sts_will_not_decode_keeps_the_command_that_does(
    account: dict[str, Any],
) -> None:
    config = account["config"]
    ec2, ec2_stub, sts, sts_stub = _stubbed(account)
    denied = DENIED_MESSAGE
    _expect_dry_runs(ec2_stub, config, ("UnauthorizedOperation", denied))
    sts_stub.add_client_error(
        "decode_authorization_message", "AccessDenied", "not authorized to perform: sts:Decode"
    )
    with ec2_stub, sts_stub:
        outcomes = check_powersave(ec2, config, decode=sts_decoder(sts))
    (gpu,) = [o for o in outcomes if o.outcome != ALLOWED]
    assert gpu.outcome == DENIED
    assert gpu.reason.startswith("You are not authorized to perform this operation.")
    assert f"aws sts decode-authorization-message --encoded-message {ENCODED}" in gpu.reason


def test_another_error_is_not_taken_for_a_permission(account: dict[str, Any]) -> None:
    config = account["config"]
    ec2, ec2_stub, _, _ = _stubbed(account)
    missing = ("InvalidLaunchTemplateId.NotFound", "The specified launch template does not exist")
    _expect_dry_runs(ec2_stub, config, missing)
    with ec2_stub:
        outcomes = check_powersave(ec2, config)
    (gpu,) = [o for o in outcomes if o.outcome != ALLOWED]
    assert (gpu.outcome, gpu.code, gpu.reason) == (ERROR, *missing)


def test_the_check_at_start_records_where_the_cli_reads(account: dict[str, Any]) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, TABLE)
    assert check.main(account["env"], session=boto3.session.Session(region_name=REGION)) == 0
    stored = record.load(dynamodb, TABLE)
    assert stored is not None and stored.checker == "controller" and stored.checked_at > 0
    assert [o.action for o in stored.outcomes] == [
        "ec2:DescribeInstances",
        "ec2:CreateFleet",
        "ec2:CreateFleet",
        "ec2:CreateTags",
        "ec2:TerminateInstances",
    ]
    assert {o.outcome for o in stored.outcomes} == {ALLOWED}


def test_the_check_at_start_refuses_bad_settings(account: dict[str, Any]) -> None:
    env = {**account["env"], "RELION_SPOT_SUBNETS": "sn-1"}
    assert check.main(env, session=boto3.session.Session(region_name=REGION)) == 2
    env = {k: v for k, v in account["env"].items() if k != "RELION_SPOT_INTAKE_TABLE"}
    assert check.main(env, session=boto3.session.Session(region_name=REGION)) == 2


def test_the_node_dry_runs_its_own_calls_on_its_own_instance(account: dict[str, Any]) -> None:
    """What a node makes with the node role: the Prolog's job tags, the Epilog's read-back and
    removal, an orphan ending itself; all on its own instance, nothing changed."""
    from relion_spot.selftest.permissions import check_node

    ec2 = account["ec2"]
    instance = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)[
        "Instances"
    ][0]["InstanceId"]
    outcomes = check_node(ec2, instance)
    assert [(o.program, o.action, o.outcome) for o in outcomes] == [
        ("prolog", "ec2:CreateTags", ALLOWED),
        ("epilog", "ec2:DescribeTags", ALLOWED),
        ("epilog", "ec2:DeleteTags", ALLOWED),
        ("orphan", "ec2:TerminateInstances", ALLOWED),
    ]
    assert all(instance in o.target for o in outcomes)
    (state,) = [
        i["State"]["Name"]
        for r in ec2.describe_instances(InstanceIds=[instance])["Reservations"]
        for i in r["Instances"]
    ]
    assert state == "running"
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"] == []


def test_a_node_role_without_the_job_tags_is_reported_denied(account: dict[str, Any]) -> None:
    from relion_spot.selftest.permissions import check_node

    ec2 = boto3.client("ec2", region_name=REGION)
    stub = Stubber(ec2)
    stub.add_client_error("create_tags", "UnauthorizedOperation", "You are not authorized.")
    for call in ("describe_tags", "delete_tags", "terminate_instances"):
        stub.add_client_error(call, "DryRunOperation", "Request would have succeeded.")
    with stub:
        outcomes = check_node(ec2, "i-0123456789abcdef0")
    assert [o.outcome for o in outcomes] == [DENIED, ALLOWED, ALLOWED, ALLOWED]
    assert outcomes[0].reason == "You are not authorized."


NODE_ARN = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"


def test_the_node_puts_its_own_report_item_for_real(account: dict[str, Any]) -> None:
    """DynamoDB has no dry run: the check puts the node's own report item for the selftest
    (a key no submission has), as the forwarder puts a job's."""
    from relion_spot.intake.table import create_table
    from relion_spot.selftest.permissions import check_report_put

    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, "intake")
    outcome = check_report_put(dynamodb, "intake", NODE_ARN)
    key = f"report:{NODE_ARN}:selftest"
    assert (outcome.program, outcome.action, outcome.target, outcome.outcome) == (
        "forwarder",
        "dynamodb:PutItem",
        key,
        ALLOWED,
    )
    item = dynamodb.get_item(TableName="intake", Key={"submission_id": {"S": key}})["Item"]
    assert item["report_job_id"] == {"S": "0"} and "expires_at" in item


def test_a_node_role_that_may_not_put_its_report_is_reported_denied() -> None:
    from relion_spot.selftest.permissions import check_report_put

    dynamodb = boto3.client("dynamodb", region_name=REGION)
    stub = Stubber(dynamodb)
    stub.add_client_error(
        "put_item", "AccessDeniedException", "User is not authorized to perform PutItem"
    )
    with stub:
        outcome = check_report_put(dynamodb, "intake", NODE_ARN)
    assert (outcome.outcome, outcome.code) == (DENIED, "AccessDeniedException")
    assert outcome.reason == "User is not authorized to perform PutItem"
