"""The budget cap and the notifications in the synthesized cluster stack (the real app, cdk-nag
included), with and without the settings."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from relion_spot.budget.config import BUDGET_ENV
from relion_spot.cost.config import COSTS_TABLE
from relion_spot.notify.publish import TOPIC_ENV


@pytest.fixture(scope="module")
def capped(synth_factory: Any) -> Template:
    synth = synth_factory(
        gpus="1", name="lab-n", monthly_budget_usd="250.5", notify_email="lab@example.org"
    )
    return Template.from_json(synth.template("lab-n-gpu1"))


@pytest.fixture(scope="module")
def uncapped(default_synth: Any) -> Template:
    return Template.from_json(default_synth.template("relion-spot-gpu1"))


def _controller_env(template: Template) -> dict[str, Any]:
    (task,) = template.find_resources("AWS::ECS::TaskDefinition").values()
    return {
        e["Name"]: e["Value"] for e in task["Properties"]["ContainerDefinitions"][0]["Environment"]
    }


def _topic_id(template: Template) -> str:
    (topic_id,) = template.find_resources("AWS::SNS::Topic")
    return topic_id


def test_the_controller_gets_the_cap_its_cost_table_and_the_topic(capped: Template) -> None:
    env = _controller_env(capped)
    assert env[BUDGET_ENV] == "250.50"
    assert env[TOPIC_ENV] == {"Ref": _topic_id(capped)}
    (costs_id,) = capped.find_resources(
        "AWS::DynamoDB::Table", {"Properties": {"GlobalSecondaryIndexes": Match.any_value()}}
    )
    assert env[COSTS_TABLE] == {"Ref": costs_id}
    capped.has_output("MonthlyBudgetUsd", {"Value": "250.50"})
    capped.has_output("NotificationTopicArn", {"Value": {"Ref": _topic_id(capped)}})


def test_without_a_cap_the_variable_is_empty_and_nothing_is_subscribed(uncapped: Template) -> None:
    assert _controller_env(uncapped)[BUDGET_ENV] == ""
    uncapped.has_output("MonthlyBudgetUsd", {"Value": "none"})
    uncapped.resource_count_is("AWS::SNS::Subscription", 0)


def test_the_topic_is_encrypted_tls_only_and_mails_the_lab(capped: Template) -> None:
    topic_id = _topic_id(capped)
    topic = capped.find_resources("AWS::SNS::Topic")[topic_id]
    assert topic["DeletionPolicy"] == "Delete"
    key = topic["Properties"]["KmsMasterKeyId"]["Fn::Join"][1]
    assert key[-1] == ":alias/aws/sns", key
    capped.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "lab@example.org", "TopicArn": {"Ref": topic_id}},
    )
    capped.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "sns:Publish",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            }
        },
    )


def test_the_controller_may_publish_and_read_the_month(capped: Template) -> None:
    """Both grants on the controller's role, in whichever of its policies CDK put them (its
    inline policy, or the managed overflow CDK adds past IAM's inline size)."""
    (costs_id,) = capped.find_resources(
        "AWS::DynamoDB::Table", {"Properties": {"GlobalSecondaryIndexes": Match.any_value()}}
    )
    statements = [
        statement
        for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        for resource in capped.find_resources(kind).values()
        if any("ControllerTaskTaskRole" in str(r) for r in resource["Properties"].get("Roles", []))
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert {
        "Action": "dynamodb:Query",
        "Effect": "Allow",
        "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [costs_id, "Arn"]}, "/index/by-start"]]},
    } in statements
    assert {
        "Action": "sns:Publish",
        "Effect": "Allow",
        "Resource": {"Ref": _topic_id(capped)},
    } in statements
