"""Every setting, each given a value other than its default in one synth, and each seen where it
takes effect in the templates. A setting that stops reaching its resources fails here by name,
and a new setting fails ``test_every_setting_is_checked`` until it has a check.

Two settings cannot share that synth with the others: ``az_count`` (``azs`` overrides it; the
network stack is built alone with it below) and ``adopt_file_system_id`` (the EFS settings would
not apply to a file system the stack does not own; tests/test_stacks.py's adopted synth)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from relion_spot.settings import SETTING_NAMES, Settings, from_context
from relion_spot.stacks.network import NetworkStack

from .conftest import Synth

NAME = "lab-e"
CLUSTERS = (f"{NAME}-gpu1", f"{NAME}-gpu4", f"{NAME}-gpu8")
CONTEXT = {
    "name": NAME,
    "region": "eu-west-1",
    "account": "123456789012",
    "azs": "eu-west-1a,eu-west-1b",
    "gpus": "1,4,8",
    "gpu_types_1": "g6.xlarge",
    "gpu_types_4": "g6.12xlarge",
    "gpu_types_8": "g6.48xlarge",
    "max_nodes": "2",
    "cpu_types": "m6a.xlarge",
    "cpu_max_nodes": "2",
    "keep_data": "false",
    "controller_capacity": "on-demand",
    "egress": "nat-gateway",
    "project": "lab-e-grant-42",
    "node_idle_seconds": "900",
    "controller_idle_seconds": "3600",
    "log_retention_days": "90",
    "dashboard": "true",
    "relion_image": "docker://123456789012.dkr.ecr.eu-west-1.amazonaws.com/relion:5.0.1",
    "monthly_budget_usd": "250",
    "notify_email": "cryoem-lab@example.org",
    "stage_buckets": "lab-e-raw",
    "efs_throughput": "provisioned",
    "efs_provisioned_mibps": "50",
}
ELSEWHERE = {"az_count", "adopt_file_system_id"}


@pytest.fixture(scope="module")
def synth(synth_factory: Callable[..., Synth]) -> Synth:
    return synth_factory(**CONTEXT)


def _resources(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == kind]


def _joined(value: Any) -> str:
    """An environment value as text: Fn::Join's strings, with ``<ref>`` for each intrinsic."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_joined(p) for p in parts)
    return "<ref>"


def _environment(synth: Synth, cluster: str) -> dict[str, str]:
    (task,) = _resources(synth.template(cluster), "AWS::ECS::TaskDefinition")
    (container,) = task["Properties"]["ContainerDefinitions"]
    return {e["Name"]: _joined(e["Value"]) for e in container["Environment"]}


def _partitions(synth: Synth, cluster: str) -> dict[str, dict[str, Any]]:
    spec = json.loads(_environment(synth, cluster)["RELION_SPOT_SLURM_SPEC"])
    return {p["name"]: p for p in spec["partitions"]}


def check_name(synth: Synth) -> None:
    assert synth.template_names() == sorted([*CLUSTERS, f"{NAME}-network", f"{NAME}-storage"])


def check_region(synth: Synth) -> None:
    assert {stack.region for stack in synth.stacks.values()} == {"eu-west-1"}  # type: ignore[attr-defined]
    assert _environment(synth, CLUSTERS[1])["AWS_DEFAULT_REGION"] == "eu-west-1"


def check_account(synth: Synth) -> None:
    assert {stack.account for stack in synth.stacks.values()} == {"123456789012"}  # type: ignore[attr-defined]


def check_azs(synth: Synth) -> None:
    subnets = _resources(synth.template(f"{NAME}-network"), "AWS::EC2::Subnet")
    assert sorted(s["Properties"]["AvailabilityZone"] for s in subnets) == [
        "eu-west-1a", "eu-west-1a", "eu-west-1b", "eu-west-1b",
    ]  # fmt: skip


def check_gpus(synth: Synth) -> None:
    for cluster, gpus in zip(CLUSTERS, (1, 4, 8), strict=True):
        assert _partitions(synth, cluster)["gpu"]["gpus"] == gpus


def _gpu_types(cluster: str, wanted: str) -> Callable[[Synth], None]:
    def check(synth: Synth) -> None:
        assert _partitions(synth, cluster)["gpu"]["instance_types"] == [wanted]
        groups = _environment(synth, cluster)["RELION_SPOT_NODE_GROUPS"]
        assert f'"instance_types":["{wanted}"]' in groups

    return check


def check_max_nodes(synth: Synth) -> None:
    assert {_partitions(synth, c)["gpu"]["max_nodes"] for c in CLUSTERS} == {2}


def check_cpu_types(synth: Synth) -> None:
    assert _partitions(synth, CLUSTERS[0])["cpu"]["instance_types"] == ["m6a.xlarge"]


def check_cpu_max_nodes(synth: Synth) -> None:
    assert _partitions(synth, CLUSTERS[0])["cpu"]["max_nodes"] == 2


def check_keep_data(synth: Synth) -> None:
    template = synth.template(f"{NAME}-storage")
    (file_system,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EFS::FileSystem"
    ]
    assert file_system["DeletionPolicy"] == "Delete"
    assert template["Outputs"]["DataKeptOnDestroy"]["Value"] == "false"


def check_controller_capacity(synth: Synth) -> None:
    (service,) = _resources(synth.template(CLUSTERS[0]), "AWS::ECS::Service")
    strategy = service["Properties"]["CapacityProviderStrategy"]
    assert strategy == [{"CapacityProvider": "FARGATE", "Weight": 1}]
    assert _environment(synth, CLUSTERS[0])["RELION_SPOT_CONTROLLER_CAPACITY_PROVIDER"] == "FARGATE"


def check_egress(synth: Synth) -> None:
    network = synth.template(f"{NAME}-network")
    assert len(_resources(network, "AWS::EC2::NatGateway")) == 1
    assert network["Outputs"]["EgressMode"]["Value"] == "nat-gateway"


def _log_groups(synth: Synth) -> list[tuple[str, dict[str, Any]]]:
    groups = [
        (name, resource)
        for name in synth.template_names()
        for resource in _resources(synth.template(name), "AWS::Logs::LogGroup")
    ]
    assert len(groups) >= 2 * len(CLUSTERS), "every cluster has its log groups"
    return groups


def check_project(synth: Synth) -> None:
    for name, resource in _log_groups(synth):
        tags = {t["Key"]: t["Value"] for t in resource["Properties"].get("Tags", [])}
        assert tags.get("Project") == "lab-e-grant-42", (name, tags)


def check_node_idle_seconds(synth: Synth) -> None:
    spec = json.loads(_environment(synth, CLUSTERS[0])["RELION_SPOT_SLURM_SPEC"])
    assert spec["suspend_time"] == 900
    assert _environment(synth, CLUSTERS[0])["RELION_SPOT_NODE_IDLE_SECONDS"] == "900"


def check_controller_idle_seconds(synth: Synth) -> None:
    assert _environment(synth, CLUSTERS[0])["RELION_SPOT_CONTROLLER_IDLE_SECONDS"] == "3600"


def check_log_retention_days(synth: Synth) -> None:
    for name, resource in _log_groups(synth):
        assert resource["Properties"]["RetentionInDays"] == 90, name


def check_dashboard(synth: Synth) -> None:
    for cluster in CLUSTERS:
        assert len(_resources(synth.template(cluster), "AWS::CloudWatch::Dashboard")) == 1


def check_relion_image(synth: Synth) -> None:
    assert (
        _environment(synth, CLUSTERS[0])["RELION_SPOT_INTAKE_RELION_IMAGE"]
        == CONTEXT["relion_image"]
    )


def check_monthly_budget_usd(synth: Synth) -> None:
    assert _environment(synth, CLUSTERS[0])["RELION_SPOT_MONTHLY_BUDGET_USD"] == "250.00"


def check_notify_email(synth: Synth) -> None:
    (subscription,) = _resources(synth.template(CLUSTERS[0]), "AWS::SNS::Subscription")
    assert subscription["Properties"]["Endpoint"] == "cryoem-lab@example.org"
    assert subscription["Properties"]["Protocol"] == "email"


def check_stage_buckets(synth: Synth) -> None:
    assert _environment(synth, CLUSTERS[0])["RELION_SPOT_INTAKE_STAGE_BUCKETS"] == "lab-e-raw"
    policies = json.dumps(_resources(synth.template(CLUSTERS[0]), "AWS::IAM::Policy"))
    assert "arn:aws:s3:::lab-e-raw/*" in policies


def check_efs_throughput(synth: Synth) -> None:
    (file_system,) = _resources(synth.template(f"{NAME}-storage"), "AWS::EFS::FileSystem")
    assert file_system["Properties"]["ThroughputMode"] == "provisioned"


def check_efs_provisioned_mibps(synth: Synth) -> None:
    (file_system,) = _resources(synth.template(f"{NAME}-storage"), "AWS::EFS::FileSystem")
    assert file_system["Properties"]["ProvisionedThroughputInMibps"] == 50


CHECKS: dict[str, Callable[[Synth], None]] = {
    "name": check_name,
    "region": check_region,
    "account": check_account,
    "azs": check_azs,
    "gpus": check_gpus,
    "gpu_types_1": _gpu_types(CLUSTERS[0], "g6.xlarge"),
    "gpu_types_4": _gpu_types(CLUSTERS[1], "g6.12xlarge"),
    "gpu_types_8": _gpu_types(CLUSTERS[2], "g6.48xlarge"),
    "max_nodes": check_max_nodes,
    "cpu_types": check_cpu_types,
    "cpu_max_nodes": check_cpu_max_nodes,
    "keep_data": check_keep_data,
    "controller_capacity": check_controller_capacity,
    "egress": check_egress,
    "project": check_project,
    "node_idle_seconds": check_node_idle_seconds,
    "controller_idle_seconds": check_controller_idle_seconds,
    "log_retention_days": check_log_retention_days,
    "dashboard": check_dashboard,
    "relion_image": check_relion_image,
    "monthly_budget_usd": check_monthly_budget_usd,
    "notify_email": check_notify_email,
    "stage_buckets": check_stage_buckets,
    "efs_throughput": check_efs_throughput,
    "efs_provisioned_mibps": check_efs_provisioned_mibps,
}


def test_every_setting_is_checked() -> None:
    assert set(CHECKS) == set(CONTEXT)
    assert sorted(set(SETTING_NAMES) - set(CHECKS)) == sorted(ELSEWHERE)


def test_every_value_differs_from_its_default() -> None:
    given, defaults = from_context(CONTEXT), Settings()
    for name in CONTEXT:
        if name.startswith("gpu_types_"):
            count = int(name.removeprefix("gpu_types_"))
            assert given.gpu_types[count] != defaults.gpu_types[count], name
        else:
            assert getattr(given, name) != getattr(defaults, name), name


@pytest.mark.parametrize("setting", sorted(CHECKS))
def test_the_setting_takes_effect(synth: Synth, setting: str) -> None:
    CHECKS[setting](synth)


def test_az_count_sets_the_number_of_zones_when_none_are_named() -> None:
    app = App()
    stack = NetworkStack(app, "lab-f-network", settings=Settings(name="lab-f", az_count=2))
    Template.from_stack(stack).resource_count_is("AWS::EC2::Subnet", 2)
    default = NetworkStack(App(), "lab-g-network", settings=Settings(name="lab-g"))
    Template.from_stack(default).resource_count_is("AWS::EC2::Subnet", 3)
