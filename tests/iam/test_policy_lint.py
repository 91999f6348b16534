"""parliament over every IAM policy document the app synthesizes.

parliament checks each action, resource format and condition key against its copy of the IAM
Service Authorization Reference, statement by statement. A condition key the action cannot carry
(UNKNOWN_CONDITION_FOR_ACTION) is a statement that never matches; an unknown action is a grant
that does nothing. Every finding fails the test unless ``accepted`` names it with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from parliament import analyze_policy_string

from .resolver import TemplateResolver

LAUNCH_ACTIONS = {"ec2:RunInstances", "ec2:CreateFleet"}
STREAM_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"}
EXCHANGE_BUCKET_POLICY = "/ResultsExchangeBucketPolicy"
"""The results exchange's bucket policy: TLS only, and CDK's auto-delete function may empty it
(tests/test_stacks.py pins both statements)."""
RESOURCE_POLICY_TYPES = {
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::EFS::FileSystem": "FileSystemPolicy",
    "AWS::S3::BucketPolicy": "PolicyDocument",
}


def documents(synth: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, kind, document) for every identity, trust and resource policy of the synth."""
    templates = {name: synth.template(name) for name in synth.template_names()}
    for stack_name in templates:
        resolver = TemplateResolver(templates, stack_name, synth.stacks[stack_name].region)
        for name, document in resolver.policy_documents().items():
            yield f"{stack_name}/{name}", "identity", document
        for logical_id, resource in resolver.resources.items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::IAM::Role":
                trust = resolver.resolve(props["AssumeRolePolicyDocument"])
                yield f"{stack_name}/{logical_id}", "trust", trust
            key = RESOURCE_POLICY_TYPES.get(resource["Type"])
            if key and key in props:
                yield f"{stack_name}/{logical_id}", "resource", resolver.resolve(props[key])


def accepted(kind: str, issue: str, detail: Any, where: str = "") -> str | None:
    """Why a finding is accepted, or None. Kept narrow: the issue and what it is about."""
    if kind == "resource" and EXCHANGE_BUCKET_POLICY in where:
        if issue == "RESOURCE_POLICY_PRIVILEGE_ESCALATION" and str(detail).endswith(
            "but does allow s3:PutBucketPolicy"
        ):
            return (
                "the one principal the exchange bucket's policy allows is the role of CDK's "
                "auto-delete function, which puts a policy shutting out new writes before it "
                "empties the bucket on stack delete; only Lambda may assume that role"
            )
        if issue == "RESOURCE_MISMATCH" and all(d["action"].startswith("s3:List") for d in detail):
            return (
                "CDK's auto-delete grant of s3:List* on the exchange bucket: parliament expands "
                "it to account-level list actions (ListAllMyBuckets, ListJobs, ...) that a "
                "policy on this bucket, naming only it, can never grant"
            )
    if issue == "RESOURCE_MISMATCH":
        actions = {d["action"] for d in detail}
        if actions <= LAUNCH_ACTIONS:
            return (
                "one statement per resource kind (instance, image, volume, subnet, ...): each "
                "kind carries different condition keys, so no single statement can hold every "
                "resource a launch needs (parliament checks each statement alone)"
            )
        if actions <= {"servicequotas:GetServiceQuota"}:
            return (
                "parliament's action data lists no resource for GetServiceQuota; IAM's current "
                "action data (the matrix's, which allows it on this quota's ARN and denies "
                "another quota) authorizes it on the quota"
            )
        if actions <= {"fis:StartExperiment"}:
            return (
                "StartExperiment authorizes the template and the new experiment; the request "
                "tag the selftest must set is a condition on the experiment only, so each has "
                "its own statement"
            )
        if actions <= STREAM_ACTIONS:
            return (
                "parliament splits ARNs on ':', and a DynamoDB stream label is a timestamp with "
                "colons; the stream ARN is the table's StreamArn attribute"
            )
    if (
        issue == "MALFORMED"
        and kind in {"trust", "resource"}
        and detail == ("Statement contains neither Resource nor NotResource")
    ):
        return (
            "parliament reads every document as an identity policy; a trust policy or a file "
            "system policy applies to the resource it is attached to and names no Resource"
        )
    return None


def findings(synth: Any) -> tuple[list[str], list[str]]:
    """(unaccepted findings, accepted findings with reasons), one line each."""
    unaccepted, kept = [], []
    for where, kind, document in documents(synth):
        policy = analyze_policy_string(json.dumps(document))
        for finding in policy.findings:
            line = f"{where} ({kind}): {finding.issue} {finding.detail}"
            reason = accepted(kind, finding.issue, finding.detail, where)
            if reason is None:
                unaccepted.append(line)
            else:
                kept.append(f"{line} -- accepted: {reason}")
    return unaccepted, kept


@pytest.mark.parametrize("synth_name", ["default_synth", "alternate_synth"])
def test_no_unaccepted_parliament_finding(synth_name: str, request: pytest.FixtureRequest) -> None:
    unaccepted, _ = findings(request.getfixturevalue(synth_name))
    assert unaccepted == []


def test_parliament_sees_a_condition_the_action_cannot_carry() -> None:
    """The mistake the launch grants used to make, so this lint cannot silently pass it."""
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ec2:CreateFleet",
                "Resource": "arn:aws:ec2:us-east-1:111111111111:instance/*",
                "Condition": {"StringEquals": {"ec2:InstanceMarketType": "spot"}},
            },
            {"Effect": "Allow", "Action": "ec2:LaunchEverything", "Resource": "*"},
        ],
    }
    issues = {f.issue for f in analyze_policy_string(json.dumps(document)).findings}
    assert {"UNKNOWN_CONDITION_FOR_ACTION", "UNKNOWN_ACTION"} <= issues
