"""``relion-spot selftest`` against a deployed cluster as the CLI sees it (moto: the stack's
outputs, the intake table holding the controller's permission checks, the cluster's instances)
and its bad-input matrix. The full --gpu --interrupt run is tests/local/test_selftest.py."""

from __future__ import annotations

import io
import json
from argparse import Namespace
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from relion_spot import __version__, tags
from relion_spot.cli import main
from relion_spot.client.cluster import find_cluster
from relion_spot.intake.table import create_table
from relion_spot.selftest import record
from relion_spot.selftest.cloud import AwsBackend, stack_outputs
from relion_spot.selftest.cost_model import (
    CPU_ROOT_VOLUME_GIB,
    GPU_ROOT_VOLUME_GIB,
    selftest_cost,
)
from relion_spot.selftest.flow import SelftestError, SelftestOptions, run
from relion_spot.selftest.permissions import check_powersave

from .test_permissions import DENIED_MESSAGE, _expect_dry_runs, account

__all__ = ["account"]

STACK = "lab-gpu1"
REGION = "us-east-1"
INTAKE = "lab-gpu1-intake"


def stack_template(outputs: dict[str, str]) -> str:
    return json.dumps(
        {
            "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()},
        }
    )


@pytest.fixture
def deployed(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    import warnings

    monkeypatch.delenv("RELION_SPOT_STACK", raising=False)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, INTAKE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        boto3.client("cloudformation", region_name=REGION).create_stack(
            StackName=STACK,
            TemplateBody=stack_template(
                {
                    "ClusterName": "lab-gpu1",
                    "Version": __version__,
                    "IntakeQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                    "IntakeTable": INTAKE,
                    "JobCostsTable": "costs",
                    "JobRecordsTable": "records",
                    "GpuInstanceTypes": "g5.xlarge,g6.xlarge",
                    "SpotInterruptionTemplateId": "EXT0123456789abcd",
                }
            ),
        )
    yield {**account, "dynamodb": dynamodb}


def _selftest(*args: str, capsys: Any) -> tuple[int, str, str]:
    code = main(["selftest", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_permission_checks_the_controller_recorded_are_shown(
    deployed: dict[str, Any], capsys: Any
) -> None:
    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    code, out, _ = _selftest("--stack", STACK, capsys=capsys)
    assert code == 0, out
    assert out.startswith("permissions")
    lines = [line for line in out.splitlines() if line.startswith("  allowed ")]
    assert len(lines) == 5
    assert any("ec2:CreateFleet" in line and "gpu:" in line for line in lines)


def test_a_denied_check_is_shown_with_its_reason_and_fails(
    deployed: dict[str, Any], capsys: Any
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    stub = Stubber(ec2)
    _expect_dry_runs(stub, deployed["config"], ("UnauthorizedOperation", DENIED_MESSAGE))
    with stub:
        outcomes = check_powersave(ec2, deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    code, out, _ = _selftest("--stack", STACK, "--gpu", capsys=capsys)
    assert code == 1
    assert "DENIED  ec2:CreateFleet" in out
    assert "UnauthorizedOperation: You are not authorized to perform this operation." in out
    assert "aws sts decode-authorization-message --encoded-message" in out
    assert "refused: a permission check did not pass: nothing was launched" in out
    assert deployed["ec2"].describe_fleets()["Fleets"] == []


def test_no_recorded_check_is_a_failure_not_a_pass(deployed: dict[str, Any], capsys: Any) -> None:
    code, out, _ = _selftest("--stack", STACK, capsys=capsys)
    assert code == 1
    assert "the controller has not recorded a check" in out


def _backend(deployed: dict[str, Any], quotas: Any) -> AwsBackend:
    session = boto3.session.Session(region_name=REGION)

    class Session:
        """The real session, with the service-quotas client EC2's answer is stubbed on."""

        region_name = REGION

        def client(self, name: str) -> Any:
            return quotas if name == "service-quotas" else session.client(name)

    handle = find_cluster(STACK, session=session)
    return AwsBackend(handle, Session(), stack_outputs(session, STACK))


def _quota_answer(stub: Stubber, value: float) -> None:
    stub.add_response(
        "get_service_quota",
        {"Quota": {"QuotaCode": "L-3819A6DF", "Value": value}},
        {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF"},
    )


def test_no_gvt_spot_quota_refuses_before_anything_is_launched(deployed: dict[str, Any]) -> None:
    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    quotas = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(quotas)
    _quota_answer(stub, 0.0)  # a new account
    with stub:
        result = run(_backend(deployed, quotas), SelftestOptions(gpu=True), lambda *_: None)
    assert "'All G and VT Spot Instance Requests' quota is 0 vCPUs; one node needs 4" in (
        result.refused
    )
    assert [p.name for p in result.phases] == ["permissions", "preconditions"]
    assert result.verdicts == [] and result.cleanup == []


def test_over_budget_refuses_naming_the_modelled_ceiling(deployed: dict[str, Any]) -> None:
    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    quotas = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(quotas)
    _quota_answer(stub, 64.0)
    options = SelftestOptions(gpu=True, interrupt=True, budget_usd=0.5)
    with stub:
        result = run(_backend(deployed, quotas), options, lambda *_: None)
    ceiling = selftest_cost(instance_type="g5.xlarge", iterations=6, interrupt=True).total_usd
    assert ceiling > 0.5
    assert f"may cost up to ${ceiling:.2f} (on-demand ceiling), over the budget" in result.refused


def test_a_busy_cluster_is_refused_so_the_drill_reaches_only_its_own_node(
    deployed: dict[str, Any],
) -> None:
    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    busy = deployed["ec2"].run_instances(
        ImageId="ami-0123456789abcdef0",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": tags.CLUSTER, "Value": "lab-gpu1"}]}
        ],
    )["Instances"][0]["InstanceId"]
    quotas = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(quotas)
    _quota_answer(stub, 64.0)
    with stub:
        result = run(_backend(deployed, quotas), SelftestOptions(gpu=True), lambda *_: None)
    assert f"the cluster has nodes running ({busy})" in result.refused


def test_the_cost_model_uses_the_templates_root_volume() -> None:
    from relion_spot.stacks.cluster import CPU_ROOT_VOLUME_GIB as STACK_CPU_ROOT
    from relion_spot.stacks.cluster import GPU_ROOT_VOLUME_GIB as STACK_ROOT

    assert GPU_ROOT_VOLUME_GIB == STACK_ROOT and CPU_ROOT_VOLUME_GIB == STACK_CPU_ROOT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "which cluster? give --stack"),
        (["--stack", "s", "--interrupt"], "--interrupt interrupts the --gpu job's node"),
        (["--stack", "s", "--iterations", "1"], "--iterations '1': give a whole number 6 to 10"),
        (["--stack", "s", "--iterations", "x"], "--iterations 'x': give a whole number 6 to 10"),
        (["--stack", "s", "--budget", "-1"], "--budget '-1': give a positive amount of USD"),
        (["--stack", "s", "--budget", "lots"], "--budget 'lots': give a positive amount"),
        (["--stack", "s", "--work-dir", "/tmp/x"], "--work-dir is for --stack local only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELION_SPOT_STACK", raising=False)
    code, out, err = _selftest(*args, capsys=capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("relion-spot selftest: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_stack_is_one_line(deployed: dict[str, Any], capsys: Any) -> None:
    code, _, err = _selftest("--stack", "nope", capsys=capsys)
    assert code == 1
    assert "stack 'nope' not found in us-east-1" in err
    assert "Traceback" not in err


def test_the_json_line_carries_the_checks(deployed: dict[str, Any]) -> None:
    from relion_spot.selftest.cli import main as selftest_main

    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    out, err = io.StringIO(), io.StringIO()
    args = Namespace(
        stack=STACK, region=None, gpu=False, interrupt=False, iterations="6", budget=None,
        work_dir=None, json=True,
    )  # fmt: skip
    assert selftest_main(args, out=out, err=err) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert [c["outcome"] for c in result["checks"]] == ["allowed"] * 5
    assert result["refused"] == "" and result["verdicts"] == {}


def test_on_a_deployed_stack_the_data_set_is_a_synthetic_job_sent_through_the_intake(
    deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first thing --gpu sends is the synthetic set's job, as ``relion-spot submit
    synthetic`` would; with no controller to accept it here, the selftest stops there and
    reports it, nothing launched. (The whole flow runs on the embedded cloud:
    tests/local/test_selftest.py.)"""
    from dataclasses import asdict

    from relion_spot.intake.message import parse
    from relion_spot.selftest import cloud
    from relion_spot.selftest.flow import DATA_SET

    monkeypatch.setattr(cloud, "ACCEPT_SECONDS", 0.5)
    queue = boto3.client("sqs", region_name=REGION).create_queue(QueueName="q")["QueueUrl"]
    outcomes = check_powersave(deployed["ec2"], deployed["config"])
    record.store(deployed["dynamodb"], INTAKE, record.CONTROLLER, outcomes)
    quotas = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(quotas)
    _quota_answer(stub, 64.0)
    with stub:
        result = run(_backend(deployed, quotas), SelftestOptions(gpu=True), lambda *_: None)
    assert [p.name for p in result.phases] == ["permissions", "preconditions", "data"]
    assert result.seen.notes[0].startswith("the submission was not accepted")
    (message,) = boto3.client("sqs", region_name=REGION).receive_message(QueueUrl=queue)["Messages"]
    sent = parse(message["Body"])
    assert sent.template == "synthetic" and sent.user.startswith("selftest:")
    assert sent.params == DATA_SET and sent.parameters == asdict(DATA_SET)
    assert {v.capability for v in result.verdicts if v.result == "FAILED"} >= {"launch", "RELION"}
    assert deployed["ec2"].describe_fleets()["Fleets"] == []


def test_the_interruption_is_the_stacks_fis_template_and_is_stopped_after(
    deployed: dict[str, Any],
) -> None:
    """StartExperiment is not in moto: FIS's documented answers on the real client."""
    fis = boto3.client("fis", region_name=REGION)
    stub = Stubber(fis)
    stub.add_response(
        "start_experiment",
        {"experiment": {"id": "EXP123", "state": {"status": "initiating"}}},
        {
            "clientToken": ANY,
            "experimentTemplateId": "EXT0123456789abcd",
            "tags": {tags.CLUSTER: "lab-gpu1"},
        },
    )
    stub.add_response(
        "get_experiment", {"experiment": {"id": "EXP123", "state": {"status": "running"}}},
        {"id": "EXP123"},
    )  # fmt: skip
    stub.add_response("stop_experiment", {"experiment": {"id": "EXP123"}}, {"id": "EXP123"})
    session = boto3.session.Session(region_name=REGION)

    class Session:
        region_name = REGION

        def client(self, name: str) -> Any:
            return fis if name == "fis" else session.client(name)

    backend = AwsBackend(
        find_cluster(STACK, session=session), Session(), stack_outputs(session, STACK)
    )
    with stub:
        handle = backend.interrupt("i-0123456789abcdef0")
        backend.end_interrupt(handle)
    assert handle == "EXP123"
    stub.assert_no_pending_responses()


def test_no_interruption_starts_while_another_gpu_node_of_the_cluster_runs(
    deployed: dict[str, Any],
) -> None:
    """FIS picks any running GPU spot node of the cluster: with another one up (someone's work),
    the selftest refuses before StartExperiment, naming it."""
    ec2 = deployed["ec2"]

    def node(name: str) -> str:
        tagged = [
            {"Key": tags.CLUSTER, "Value": "lab-gpu1"},
            {"Key": tags.PARTITION, "Value": "gpu"},
            {"Key": tags.NODE, "Value": name},
        ]
        return ec2.run_instances(
            ImageId="ami-0123456789abcdef0",
            MinCount=1,
            MaxCount=1,
            InstanceType="g5.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tagged}],
        )["Instances"][0]["InstanceId"]

    own, other = node("gpu-1"), node("gpu-2")
    fis = boto3.client("fis", region_name=REGION)
    session = boto3.session.Session(region_name=REGION)

    class Session:
        region_name = REGION

        def client(self, name: str) -> Any:
            return fis if name == "fis" else session.client(name)

    backend = AwsBackend(
        find_cluster(STACK, session=session), Session(), stack_outputs(session, STACK)
    )
    with Stubber(fis) as stub, pytest.raises(SelftestError) as refused:
        backend.interrupt(own)
    stub.assert_no_pending_responses()
    assert f"not interrupting: 1 other GPU node(s) of lab-gpu1 run ({other})" in str(refused.value)
