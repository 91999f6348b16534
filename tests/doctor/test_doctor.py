"""``relion-spot doctor`` against a fresh account and a ready one.

IAM, EC2 (instance type offerings per zone: moto's us-east-1e offers no g5, as AWS's does not)
and SSM are moto. moto has no EC2 service quotas, Lambda account settings or cost allocation
tags: those answers come from botocore's Stubber on real clients, which checks every request
and response against the AWS API model.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from relion_spot.doctor import cli
from relion_spot.doctor.checks import (
    COST_TAGS,
    G_VT_SPOT_QUOTA,
    STANDARD_SPOT_QUOTA,
    Clients,
    spot_vcpus_needed,
)
from relion_spot.settings import from_context

REGION = "us-east-1"


def _quota(code: tuple[str, str], value: float) -> dict[str, Any]:
    return {
        "Quota": {
            "ServiceCode": code[0],
            "QuotaCode": code[1],
            "QuotaName": code[1],
            "Value": value,
        }
    }


class Account:
    """One account: moto for IAM/EC2/SSM, stubbed answers for quotas, Lambda and CE."""

    def __init__(self, *, gpu_quota: float, cpu_quota: float, unreserved: int, tags: str) -> None:
        self.quotas = boto3.client("service-quotas", region_name=REGION)
        self.lambda_ = boto3.client("lambda", region_name=REGION)
        self.ce = boto3.client("ce", region_name=REGION)
        self.stubs = [Stubber(self.quotas), Stubber(self.lambda_), Stubber(self.ce)]
        quotas, lambda_, ce = self.stubs
        for code, value in ((G_VT_SPOT_QUOTA, gpu_quota), (STANDARD_SPOT_QUOTA, cpu_quota)):
            quotas.add_response(
                "get_service_quota",
                _quota(code, value),
                {"ServiceCode": code[0], "QuotaCode": code[1]},
            )
        lambda_.add_response(
            "get_account_settings",
            {
                "AccountLimit": {
                    "ConcurrentExecutions": unreserved,
                    "UnreservedConcurrentExecutions": unreserved,
                }
            },
        )
        ce.add_response(
            "list_cost_allocation_tags",
            {
                "CostAllocationTags": [
                    {"TagKey": t, "Type": "UserDefined", "Status": tags} for t in COST_TAGS
                ]
            },
            {"TagKeys": list(COST_TAGS)},
        )
        for stub in self.stubs:
            stub.activate()

    def clients(self) -> Clients:
        return Clients(
            service_quotas=self.quotas,
            iam=boto3.client("iam", region_name=REGION),
            ec2=boto3.client("ec2", region_name=REGION),
            ssm=boto3.client("ssm", region_name=REGION),
            lambda_=self.lambda_,
            ce=self.ce,
        )

    def all_asked(self) -> None:
        for stub in self.stubs:
            stub.assert_no_pending_responses()


def _doctor(monkeypatch: pytest.MonkeyPatch, account: Account, *context: str) -> tuple[int, str]:
    monkeypatch.setattr(cli, "clients_for", lambda region: account.clients())
    out = io.StringIO()
    args = argparse.Namespace(context=list(context), no_docker=True)
    code = cli.main(args, out)
    account.all_asked()
    return code, out.getvalue()


@pytest.fixture
def fresh(moto_aws: None) -> Iterator[Account]:
    yield Account(gpu_quota=0, cpu_quota=5, unreserved=10, tags="Inactive")


@pytest.fixture
def ready(moto_aws: None) -> Iterator[Account]:
    iam = boto3.client("iam", region_name=REGION)
    for service, role in (
        ("ecs.amazonaws.com", "AWSServiceRoleForECS"),
        ("spot.amazonaws.com", "AWSServiceRoleForEC2Spot"),
        ("ec2fleet.amazonaws.com", "AWSServiceRoleForEC2Fleet"),
    ):
        iam.create_role(
            RoleName=role,
            Path=f"/aws-service-role/{service}/",
            AssumeRolePolicyDocument="{}",
        )
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String"
    )
    yield Account(gpu_quota=256, cpu_quota=64, unreserved=1000, tags="Active")


def test_a_fresh_account_gets_every_blocker_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, fresh: Account
) -> None:
    code, out = _doctor(monkeypatch, fresh, "azs=us-east-1a,us-east-1e", "max_nodes=2")
    assert code == 1, out
    lines = out.splitlines()
    assert lines[-1] == "NOT ready: fix the blockers above (4 blocker(s), 4 warning(s))", out
    expected = [
        "BLOCKER  G/VT spot vCPU quota: 0 vCPUs: no GPU spot instance can start (8 needed for "
        "max_nodes=2 of the largest types)",
        "           fix: aws service-quotas request-service-quota-increase --region us-east-1 "
        "--service-code ec2 --quota-code L-3819A6DF --desired-value 8",
        "ok       standard spot vCPU quota: 5 vCPUs (>= 4 needed)",
        "warning  service-linked role AWSServiceRoleForECS: missing",
        "           fix: the deploy creates it (a custom resource), or aws iam "
        "create-service-linked-role --aws-service-name ecs.amazonaws.com",
        "BLOCKER  service-linked role AWSServiceRoleForEC2Spot: missing",
        "BLOCKER  service-linked role AWSServiceRoleForEC2Fleet: missing",
        "warning  1-GPU types in zones: us-east-1e offer none of g5.xlarge, g6.xlarge: launches "
        "use the other zones",
        "ok       Lambda concurrency: 10 unreserved (the stack reserves none)",
        "BLOCKER  CDK bootstrap: not bootstrapped in us-east-1",
        "           fix: node_modules/.bin/cdk bootstrap aws://ACCOUNT/us-east-1",
        "warning  cost allocation tags: not active: relion-spot:cluster, relion-spot:job-id, "
        "Project (the bill cannot be split per job until they are; they count from activation "
        "on, and appear only after first use)",
    ]
    for line in expected:
        assert line in lines, f"missing: {line}\n{out}"


def test_a_ready_account_passes(monkeypatch: pytest.MonkeyPatch, ready: Account) -> None:
    code, out = _doctor(monkeypatch, ready, "gpus=1,4")
    assert code == 0, out
    assert out.splitlines()[-1] == "ready to deploy (0 blocker(s), 0 warning(s))", out
    assert "ok       G/VT spot vCPU quota: 256 vCPUs (>= 208 needed)" in out


def test_needed_vcpus_count_every_cluster_at_full_scale() -> None:
    settings = from_context({"gpus": "1,4", "max_nodes": "3", "cpu_max_nodes": "2"})
    # 3 x g6.xlarge-class (4 vCPUs) + 3 x 48 vCPUs; CPU: 2 x 4 per cluster, two clusters.
    assert spot_vcpus_needed(settings) == (3 * 4 + 3 * 48, 2 * 4 * 2)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (["gpus=3"], "relion-spot doctor: setting 'gpus' = '3' is not valid"),
        (["gpus"], "relion-spot doctor: -c 'gpus': give KEY=VALUE"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    context: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(argparse.Namespace(context=context, no_docker=True), io.StringIO())
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
