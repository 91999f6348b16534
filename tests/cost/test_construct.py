"""CostTracker synthesized alone in a throwaway stack, checked with CDK assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Match, Template

from relion_spot import tags
from relion_spot.constructs import lambda_code
from relion_spot.constructs.cost_tracker import CostTracker
from relion_spot.constructs.lambda_code import LAMBDA_RUNTIME
from relion_spot.cost import config

REPO = Path(__file__).resolve().parents[2]


def app_context() -> dict:
    cdk_json = REPO / "cdk.json"
    return json.loads(cdk_json.read_text()).get("context", {}) if cdk_json.is_file() else {}


def synth(**options) -> tuple[Template, CostTracker]:
    app = App(context=app_context())
    stack = Stack(app, "CostOnly", env={"account": "111111111111", "region": "us-east-1"})
    tracker = CostTracker(
        stack, "Cost", cluster_name="gpu1", log_retention=logs.RetentionDays.ONE_MONTH, **options
    )
    controller = iam.Role(
        stack, "Controller", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com")
    )
    tracker.grant_record_writer(controller)
    tracker.watch_launch_template("lt-0123456789abcdef0", launch_tags={tags.PARTITION: "gpu"})
    return Template.from_stack(stack), tracker


@pytest.fixture(scope="module")
def synthesized() -> tuple[Template, CostTracker]:
    return synth()


@pytest.fixture(scope="module")
def template(synthesized) -> Template:
    return synthesized[0]


def test_tables_are_on_demand_recoverable_and_retained(template: Template):
    template.resource_count_is("AWS::DynamoDB::Table", 2)
    template.all_resources_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )
    template.has_resource(
        "AWS::DynamoDB::Table", {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
    )
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [
                {"AttributeName": "job", "KeyType": "HASH"},
                {"AttributeName": "attempt", "KeyType": "RANGE"},
            ],
            "StreamSpecification": {"StreamViewType": "KEYS_ONLY"},
        },
    )
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {"GlobalSecondaryIndexes": [Match.object_like({"IndexName": "by-start"})]},
    )


def test_removal_policy_is_explicit():
    template, _ = synth(removal_policy=RemovalPolicy.DESTROY)
    template.all_resources(
        "AWS::DynamoDB::Table", {"DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete"}
    )


def test_function_runtime_logs_and_triggers(template: Template):
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Runtime": LAMBDA_RUNTIME.name,
            "Handler": "relion_spot.cost.handler.main",
            "ReservedConcurrentExecutions": Match.absent(),  # a new account has none to reserve
            "LoggingConfig": {"LogGroup": Match.any_value()},
            "Environment": {
                "Variables": Match.object_like(
                    {
                        config.CLUSTER: "gpu1",
                        config.RECORDS_TABLE: Match.any_value(),
                        config.COSTS_TABLE: Match.any_value(),
                        config.LAUNCH_TEMPLATES: Match.serialized_json(
                            [
                                {
                                    "launch_template_id": "lt-0123456789abcdef0",
                                    "tags": {tags.PARTITION: "gpu"},
                                }
                            ]
                        ),
                    }
                )
            },
        },
    )
    template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 30})
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(1 hour)",
            "Targets": [
                Match.object_like({"Input": Match.serialized_json({"action": "schedule"})})
            ],
        },
    )
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "cron(30 6 * * ? *)",
            "Targets": [
                Match.object_like({"Input": Match.serialized_json({"action": "reconcile"})})
            ],
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "StartingPosition": "LATEST",
            "BisectBatchOnFunctionError": True,
            "FilterCriteria": {
                "Filters": [{"Pattern": Match.serialized_json({"eventName": ["INSERT"]})}]
            },
        },
    )


def test_nodes_are_counted_every_five_minutes_without_retries(template: Template):
    """The dashboard's node gauge; a missed count is superseded by the next, not retried."""
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(5 minutes)",
            "Targets": [
                Match.object_like(
                    {
                        "Input": Match.serialized_json({"action": "count-nodes"}),
                        "RetryPolicy": {"MaximumRetryAttempts": 0},
                    }
                )
            ],
        },
    )


def statements(template: Template, role_prefix: str) -> list[dict]:
    found = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        roles = json.dumps(policy["Properties"]["Roles"])
        if role_prefix in roles:
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def test_function_iam_is_least_privilege(template: Template):
    granted = statements(template, "CostRole")
    by_sid = {s.get("Sid"): s for s in granted if s.get("Sid")}
    assert by_sid["ReadPricesAndInventory"]["Resource"] == "*"
    repair = by_sid["RepairClusterTags"]
    assert repair["Action"] == "ec2:CreateTags"
    assert repair["Condition"]["StringEquals"] == {f"aws:ResourceTag/{tags.CLUSTER}": "gpu1"}
    assert set(repair["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]) >= {
        tags.CLUSTER,
        tags.PARTITION,
    }
    claim = by_sid["ClaimUntaggedAttachments"]
    assert claim["Condition"]["Null"] == {f"aws:ResourceTag/{tags.CLUSTER}": "true"}
    assert all(":instance/" not in r for r in claim["Resource"])
    assert by_sid["PublishJobCost"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "RelionSpot"}
    }
    assert by_sid["ReadBilledCost"]["Action"] == "ce:GetCostAndUsage"
    assert by_sid["ReadJobStorageIo"]["Action"] == "cloudwatch:GetMetricData"
    launches = [
        s
        for s in granted
        if "aws:ResourceTag/aws:ec2launchtemplate:id" in json.dumps(s.get("Condition", {}))
    ]
    assert len(launches) == 1
    assert launches[0]["Condition"]["StringEquals"][f"aws:RequestTag/{tags.CLUSTER}"] == "gpu1"
    # every CreateTags grant is conditioned; DynamoDB is scoped to the two tables
    for statement in granted:
        if "ec2:CreateTags" in json.dumps(statement["Action"]):
            assert statement.get("Condition")
        if "dynamodb" in json.dumps(statement["Action"]) and statement["Resource"] == "*":
            # the stream event source needs ListStreams, which has no resource scope
            assert statement["Action"] == "dynamodb:ListStreams"


def test_record_writer_may_only_write_attempt_records(template: Template):
    granted = statements(template, "Controller")
    dynamo = [s for s in granted if "dynamodb" in json.dumps(s["Action"])]
    assert len(dynamo) == 1
    assert sorted(dynamo[0]["Action"]) == [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    assert "AttemptRecords" in json.dumps(dynamo[0]["Resource"])
    assert "JobCosts" not in json.dumps(dynamo[0]["Resource"])
    assert "Delete" not in json.dumps(granted)


def test_tracker_exposes_table_names_and_refuses_foreign_tags(synthesized):
    _, tracker = synthesized
    assert tracker.records_table_name and tracker.costs_table_name
    env = tracker.record_writer_environment()
    assert set(env) == {config.CLUSTER, config.RECORDS_TABLE, "AWS_DEFAULT_REGION"}
    with pytest.raises(ValueError, match="cannot be repaired"):
        tracker.watch_launch_template("lt-1", launch_tags={"Owner": "me"})


def test_lambda_asset_imports_without_cdk(template: Template):
    staged = lambda_code._stage(("cost",))
    probe = (
        "import sys, relion_spot.cost.handler, relion_spot.cost.jobcomp;"
        "assert relion_spot.__file__.startswith(sys.argv[1]), relion_spot.__file__;"
        "bad = [m for m in ('aws_cdk', 'rich', 'pandas', 'numpy') if m in sys.modules];"
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(staged)],
        cwd=staged,
        env={"PYTHONPATH": str(staged), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
