"""The staging job's S3 reads, authorized against the synthesized policies.

``stage_buckets`` names the buckets staging may read (alternate synth: lab-b-raw and
lab-b.archive). A job holds no instance credentials: the node's root broker
(relion_spot.node.stage_credentials) assumes the stage-reader role and hands the job that
session (a staging job on a CPU node, a Class3D copying its ``dataset`` on a GPU node). So the
chain is judged link by link: both node roles may assume the reader (their identity policies and
the reader's trust policy, both evaluated), no other role of the account may; the
reader calls HeadObject and a ranged GetObject (both authorized as ``s3:GetObject`` on the
object) and ListBucket on the bucket, so a missing key says 404; nothing may write, and the node
roles themselves read no bucket.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from relion_spot.node.stage_credentials import DATASET, Approved, session_policy

from .resolver import ACCOUNT, PARTITION, RolePolicies, TemplateResolver
from .simulator import Decision, Request, simulate

STACK = "lab-b-gpu4"
GRANTED = ("lab-b-raw", "lab-b.archive")
READER = "stage-reader"


def _object(bucket: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}/relion_benchmark.tar.gz"


def _bucket(bucket: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}"


def _reads(principal: str, allowed: bool) -> dict[str, tuple[bool, Request]]:
    verdict = "" if allowed else "deny/"
    return {
        **{
            f"{principal}/{verdict}s3:GetObject/{b}": (
                allowed,
                Request(principal, "s3:GetObject", _object(b)),
            )
            for b in GRANTED
        },
        **{
            f"{principal}/{verdict}s3:ListBucket/{b}": (
                allowed,
                Request(principal, "s3:ListBucket", _bucket(b)),
            )
            for b in GRANTED
        },
    }


CASES: dict[str, tuple[bool, Request]] = {
    **_reads(READER, True),
    f"{READER}/deny/s3:GetObject/another-bucket": (
        False,
        Request(READER, "s3:GetObject", _object("someone-elses")),
    ),
    f"{READER}/deny/s3:ListBucket/another-bucket": (
        False,
        Request(READER, "s3:ListBucket", _bucket("someone-elses")),
    ),
    f"{READER}/deny/s3:PutObject/granted-bucket": (
        False,
        Request(READER, "s3:PutObject", _object("lab-b-raw")),
    ),
    f"{READER}/deny/s3:DeleteObject/granted-bucket": (
        False,
        Request(READER, "s3:DeleteObject", _object("lab-b-raw")),
    ),
    **_reads("cpu-node", False),
    **_reads("gpu-node", False),
}
APPROVED = Approved("42", "lab-b-raw", "benchmarks/relion_benchmark.tar.gz")
SESSION = json.loads(session_policy(APPROVED, PARTITION))
SESSION_CASES: dict[str, tuple[bool, Request]] = {
    "session/s3:GetObject/approved-object": (
        True,
        Request(READER, "s3:GetObject", f"{_bucket(APPROVED.bucket)}/{APPROVED.key}"),
    ),
    "session/s3:ListBucket/approved-key": (
        True,
        Request(READER, "s3:ListBucket", _bucket(APPROVED.bucket), {"s3:prefix": APPROVED.key}),
    ),
    "session/deny/s3:ListBucket/the-whole-bucket": (
        False,
        Request(READER, "s3:ListBucket", _bucket(APPROVED.bucket), {"s3:prefix": ""}),
    ),
    "session/deny/s3:GetObject/another-object-same-bucket": (
        False,
        Request(READER, "s3:GetObject", f"{_bucket(APPROVED.bucket)}/someone-elses.tar.gz"),
    ),
    "session/deny/s3:GetObject/another-granted-bucket": (
        False,
        Request(READER, "s3:GetObject", _object("lab-b.archive")),
    ),
}
"""The broker's session (relion_spot.node.stage_credentials.session_policy) inside the role:
the one object the intake accepted the job to stage."""
DATASET_APPROVED = Approved("43", "lab-b-raw", "sets/bench/", DATASET)
DATASET_SESSION = json.loads(session_policy(DATASET_APPROVED, PARTITION))
_SET = f"{_bucket('lab-b-raw')}/sets/bench"
DATASET_SESSION_CASES: dict[str, tuple[bool, Request]] = {
    "dataset/s3:GetObject/under-the-prefix": (
        True,
        Request(READER, "s3:GetObject", f"{_SET}/Particles/stack001.mrcs"),
    ),
    "dataset/s3:ListBucket/the-prefix": (
        True,
        Request(READER, "s3:ListBucket", _bucket("lab-b-raw"), {"s3:prefix": "sets/bench/"}),
    ),
    "dataset/deny/s3:GetObject/beside-the-prefix": (
        False,
        Request(READER, "s3:GetObject", f"{_bucket('lab-b-raw')}/sets/bench-other/x.mrcs"),
    ),
    "dataset/deny/s3:ListBucket/above-the-prefix": (
        False,
        Request(READER, "s3:ListBucket", _bucket("lab-b-raw"), {"s3:prefix": "sets/"}),
    ),
    "dataset/deny/s3:ListBucket/the-whole-bucket": (
        False,
        Request(READER, "s3:ListBucket", _bucket("lab-b-raw"), {"s3:prefix": ""}),
    ),
}
"""A Class3D's dataset named as a prefix: read under it, list it alone."""
DECISIONS = {"cpu-node": True, "gpu-node": True}
"""Both nodes' brokers read a submission's decision (GetItem on the intake table) where a stage
reader exists; without stage buckets the GPU node's may not (tests/iam/test_authorization_matrix).
"""
ASSUMERS = {"cpu-node": True, "gpu-node": True, READER: False, "any-assumer": False}
"""``any-assumer``: a role of the same account whose own policy allows sts:AssumeRole on every
role; the reader's trust, naming the CPU node role alone, must still refuse it."""


@pytest.fixture(scope="module")
def roles(alternate_synth: Any) -> dict[str, Any]:
    templates = {n: alternate_synth.template(n) for n in alternate_synth.template_names()}
    region = alternate_synth.stacks[STACK].region
    resolver = TemplateResolver(templates, STACK, region)
    found = resolver.role_policies()

    def role(prefix: str) -> Any:
        (match,) = [r for logical_id, r in found.items() if logical_id.startswith(prefix)]
        return match

    (reader_id,) = resolver.logical_ids("AWS::IAM::Role", "StageReader")
    trust = resolver.resolve(
        resolver.resources[reader_id]["Properties"]["AssumeRolePolicyDocument"]
    )
    (table_id,) = resolver.logical_ids("AWS::DynamoDB::Table", "IntakeSubmissions")
    return {
        "intake_table": resolver.get_att(table_id, "Arn"),
        "principals": {
            "cpu-node": role("CpuNodesRole"),
            "gpu-node": role("GpuNodesRole"),
            READER: role("StageReader"),
            "any-assumer": RolePolicies(
                logical_id="AnyAssumer",
                arn=f"arn:{PARTITION}:iam::{ACCOUNT}:role/any-assumer",
                policies=[
                    {
                        "name": "assume-anything",
                        "policy": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}
                            ],
                        },
                    }
                ],
                managed_policy_arns=[],
            ),
        },
        "trust": trust,
    }


@pytest.fixture(scope="module")
def decisions(roles: dict[str, Any]) -> dict[str, Decision]:
    principals = roles["principals"]
    reader_arn = principals[READER].arn
    requests = {case_id: request for case_id, (_, request) in CASES.items()}
    for name in ASSUMERS:
        requests[f"{name}/sts:AssumeRole/reader"] = Request(
            name, "sts:AssumeRole", reader_arn, resource_policy=roles["trust"]
        )
    for case_id, (_, request) in SESSION_CASES.items():
        requests[case_id] = replace(request, session_policy=SESSION)
    for case_id, (_, request) in DATASET_SESSION_CASES.items():
        requests[case_id] = replace(request, session_policy=DATASET_SESSION)
    for name in DECISIONS:
        requests[f"{name}/dynamodb:GetItem/intake"] = Request(
            name, "dynamodb:GetItem", roles["intake_table"]
        )
    return simulate(principals, requests)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_stage_bucket_reads(case_id: str, decisions: dict[str, Decision]) -> None:
    allowed, _ = CASES[case_id]
    decision = decisions[case_id]
    assert decision.decision != "Error", decision.errors
    assert decision.ignored == []
    assert decision.allowed == allowed, f"{case_id}: got {decision.decision}"


@pytest.mark.parametrize("name", sorted(ASSUMERS))
def test_only_the_node_roles_assume_the_stage_reader(
    name: str, decisions: dict[str, Decision]
) -> None:
    decision = decisions[f"{name}/sts:AssumeRole/reader"]
    assert decision.decision != "Error", decision.errors
    assert decision.allowed == ASSUMERS[name], f"{name}: got {decision.decision}"


@pytest.mark.parametrize("case_id", sorted(SESSION_CASES))
def test_the_brokers_session_reads_only_the_approved_object(
    case_id: str, decisions: dict[str, Decision]
) -> None:
    allowed, _ = SESSION_CASES[case_id]
    decision = decisions[case_id]
    assert decision.decision != "Error", decision.errors
    assert decision.allowed == allowed, f"{case_id}: got {decision.decision}"


@pytest.mark.parametrize("case_id", sorted(DATASET_SESSION_CASES))
def test_a_dataset_session_reads_and_lists_only_its_prefix(
    case_id: str, decisions: dict[str, Decision]
) -> None:
    allowed, _ = DATASET_SESSION_CASES[case_id]
    decision = decisions[case_id]
    assert decision.decision != "Error", decision.errors
    assert decision.ignored == []
    assert decision.allowed == allowed, f"{case_id}: got {decision.decision}"


@pytest.mark.parametrize("name", sorted(DECISIONS))
def test_the_node_brokers_read_a_submissions_decision(
    name: str, decisions: dict[str, Decision]
) -> None:
    decision = decisions[f"{name}/dynamodb:GetItem/intake"]
    assert decision.decision != "Error", decision.errors
    assert decision.allowed == DECISIONS[name], f"{name}: got {decision.decision}"
