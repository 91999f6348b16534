"""The intake in the synthesized cluster stacks (the session's shared synths, see conftest)."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Capture, Match, Template

from relion_spot.constructs.intake import TABLE_LOGICAL_ID
from relion_spot.intake import config, slurm

CLUSTERS = ("relion-spot-gpu1", "relion-spot-gpu4", "relion-spot-gpu8")


def _resources(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _controller_environment(template: dict) -> dict:
    (task,) = _resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    return {e["Name"]: e["Value"] for e in container["Environment"]}


def _queues(template: dict) -> tuple[str, str]:
    """(intake queue, dead-letter queue) logical ids."""
    queues = _resources(template, "AWS::SQS::Queue")
    assert len(queues) == 2
    (main,) = [k for k, q in queues.items() if "RedrivePolicy" in q["Properties"]]
    (dead,) = set(queues) - {main}
    return main, dead


@pytest.mark.parametrize("stack", CLUSTERS)
def test_queue_is_encrypted_tls_only_and_dead_letters_after_a_few_receives(
    default_synth, stack: str
) -> None:
    raw = default_synth.template(stack)
    main, dead = _queues(raw)
    template = Template.from_json(raw)
    template.has_resource(
        "AWS::SQS::Queue",
        {
            "Properties": {
                "SqsManagedSseEnabled": True,
                "VisibilityTimeout": config.VISIBILITY_TIMEOUT_SECONDS,
                "ReceiveMessageWaitTimeSeconds": config.RECEIVE_WAIT_SECONDS,
                "MessageRetentionPeriod": 14 * 86400,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": [dead, "Arn"]},
                    "maxReceiveCount": config.MAX_RECEIVES,
                },
                "Tags": Match.array_with([{"Key": "relion-spot:cluster", "Value": stack}]),
            },
            "DeletionPolicy": "Delete",
        },
    )
    assert raw["Resources"][dead]["Properties"]["SqsManagedSseEnabled"] is True
    for queue in (main, dead):
        template.has_resource_properties(
            "AWS::SQS::QueuePolicy",
            {
                "Queues": [{"Ref": queue}],
                "PolicyDocument": {
                    "Statement": [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "sqs:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ],
                    "Version": "2012-10-17",
                },
            },
        )


def test_visibility_outlasts_one_drain_step() -> None:
    """squeue twice (readiness, then the lookup), sbatch once, with room for the rest."""
    step = 2 * slurm.SQUEUE_TIMEOUT_SECONDS + slurm.SBATCH_TIMEOUT_SECONDS
    assert 2 * step <= config.VISIBILITY_TIMEOUT_SECONDS


def test_table_keyed_by_submission_id_on_demand_recoverable_with_a_pinned_id(
    default_synth, alternate_synth
) -> None:
    for synth, stack, policy in (
        (default_synth, "relion-spot-gpu1", "Retain"),
        (default_synth, "relion-spot-gpu8", "Retain"),
        (alternate_synth, "lab-b-gpu4", "Delete"),
    ):
        table = synth.template(stack)["Resources"][TABLE_LOGICAL_ID]
        assert table["Type"] == "AWS::DynamoDB::Table"
        assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == (policy, policy)
        props = table["Properties"]
        assert props["KeySchema"] == [{"AttributeName": "submission_id", "KeyType": "HASH"}]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        # The nodes' report items end on their own; a submission has no such attribute.
        assert props["TimeToLiveSpecification"] == {
            "AttributeName": config.REPORT_EXPIRES,
            "Enabled": True,
        }
        assert "GlobalSecondaryIndexes" not in props and "StreamSpecification" not in props


@pytest.mark.parametrize("stack", CLUSTERS)
def test_controller_is_told_where_the_intake_is(default_synth, stack: str) -> None:
    raw = default_synth.template(stack)
    main, _ = _queues(raw)
    env = _controller_environment(raw)
    assert env[config.QUEUE_URL_ENV] == {"Ref": main}
    assert env[config.TABLE_ENV] == {"Ref": TABLE_LOGICAL_ID}
    assert env[config.DATA_ROOT_ENV] == "/data"
    # The report relay's instances: this account's, in this region and partition.
    assert env[config.INSTANCE_ARN_PREFIX_ENV] == {
        "Fn::Join": ["", ["arn:aws:ec2:us-east-1:", {"Ref": "AWS::AccountId"}, ":instance/"]]
    }
    outputs = raw["Outputs"]
    assert outputs["IntakeQueueUrl"]["Value"] == {"Ref": main}
    assert outputs["IntakeTable"]["Value"] == {"Ref": TABLE_LOGICAL_ID}


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_dead_letter_queue_is_an_output_and_no_alarm_stands_for_it(
    default_synth, stack: str
) -> None:
    """The drainer tells the topic of each message it gives up on (tests/intake/test_poison.py),
    so nothing bills for the dead-letter queue while the cluster sleeps."""
    raw = default_synth.template(stack)
    _, dead = _queues(raw)
    assert raw["Outputs"]["IntakeDeadLetterQueueUrl"]["Value"] == {"Ref": dead}
    assert "IntakeDeadLetterAlarm" not in raw["Outputs"]
    watched = json.dumps(_resources(raw, "AWS::CloudWatch::Alarm"))
    assert dead not in watched


def _assert_users_only_send_and_read(policy: dict, queue: str) -> None:
    """The lab's commands (the LabMember and LabAdmin policies) submit and cancel by message
    and read the decisions; they never receive, erase or write one."""
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        resources = _as_list(statement["Resource"])
        actions = set(_as_list(statement["Action"]))
        if {"Fn::GetAtt": [queue, "Arn"]} in resources:
            assert actions <= {"sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"}
        if {"Fn::GetAtt": [TABLE_LOGICAL_ID, "Arn"]} in resources:
            assert actions <= {
                "dynamodb:GetItem",
                "dynamodb:Scan",
                "dynamodb:BatchGetItem",
                "dynamodb:Query",
            }


def test_controller_may_consume_and_record_but_not_send_or_erase(default_synth) -> None:
    raw = default_synth.template("relion-spot-gpu4")
    main, dead = _queues(raw)
    task_role = Capture()
    Template.from_json(raw).has_resource_properties(
        "AWS::ECS::TaskDefinition", {"TaskRoleArn": {"Fn::GetAtt": [task_role, "Arn"]}}
    )
    sqs_actions: set[str] = set()
    table_actions: dict[str, set[str]] = {}
    managed = _resources(raw, "AWS::IAM::ManagedPolicy")
    lab_policies = [p for name, p in managed.items() if name.startswith("LabAccess")]
    assert len(lab_policies) == 2
    for policy in lab_policies:
        _assert_users_only_send_and_read(policy, main)
    role_policies = [
        *_resources(raw, "AWS::IAM::Policy").values(),
        *(p for name, p in managed.items() if not name.startswith("LabAccess")),
    ]
    for policy in role_policies:
        if "Groups" in policy["Properties"]:
            _assert_users_only_send_and_read(policy, main)
            continue
        roles = [r["Ref"] for r in policy["Properties"]["Roles"]]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            resources = _as_list(statement["Resource"])
            actions = set(_as_list(statement["Action"]))
            if {"Fn::GetAtt": [dead, "Arn"]} in resources:
                raise AssertionError(f"nobody is granted the dead-letter queue: {statement}")
            if {"Fn::GetAtt": [main, "Arn"]} in resources:
                assert resources == [{"Fn::GetAtt": [main, "Arn"]}]
                if roles[0].startswith("ControllerWakeRole"):
                    # The wake check counts the queue's messages and may touch none.
                    assert (roles, actions) == (roles[:1], {"sqs:GetQueueAttributes"})
                    continue
                assert roles == [task_role.as_string()]
                sqs_actions |= actions
            if {"Fn::GetAtt": [TABLE_LOGICAL_ID, "Arn"]} in resources:
                assert len(roles) == 1
                assert all(isinstance(r, dict) for r in resources), "no wildcard"
                table_actions.setdefault(roles[0], set()).update(actions)
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= sqs_actions
    assert not any(a.startswith("sqs:Send") or a == "sqs:PurgeQueue" for a in sqs_actions)
    controller = table_actions.pop(task_role.as_string())
    assert controller == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
    # The nodes forward their jobs' reports into the submission's item (UpdateItem) and record
    # their own permission checks (PutItem, only under those keys: tests/iam); the CPU node's
    # credential broker reads decisions (every cluster's exports, and stages from S3).
    by_group = {role[: len("GpuNodesRole")]: actions for role, actions in table_actions.items()}
    assert len(by_group) == len(table_actions) == 2
    assert by_group["GpuNodesRole"] == {"dynamodb:PutItem"}
    assert by_group["CpuNodesRole"] == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
    }
