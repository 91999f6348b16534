"""What an account must have before the first deploy and the first job, checked by AWS's own APIs.

A new AWS account refuses GPU spot by default (the "All G and VT Spot Instance Requests" quota is
0 vCPUs), may lack the service-linked roles ECS, Spot and EC2 Fleet create on first use, may not
offer the configured instance types in every availability zone, and has no CDK bootstrap. Each
check returns findings: what was found, how bad it is, and the command that fixes it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import catalog
from ..settings import Settings

OK = "ok"
WARNING = "warning"
BLOCKER = "blocker"

G_VT_SPOT_QUOTA = ("ec2", "L-3819A6DF")
"""Service Quotas code of "All G and VT Spot Instance Requests" (vCPUs)."""
STANDARD_SPOT_QUOTA = ("ec2", "L-34B43A08")
"""Service Quotas code of "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"."""
SERVICE_LINKED_ROLES = {
    "ecs.amazonaws.com": "AWSServiceRoleForECS",
    "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
    "ec2fleet.amazonaws.com": "AWSServiceRoleForEC2Fleet",
}
CDK_BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
MIN_CDK_BOOTSTRAP_VERSION = 21
"""The bootstrap version the pinned CDK CLI's templates ask for (BootstrapVersion rule)."""
COST_TAGS = ("relion-spot:cluster", "relion-spot:job-id", "Project")


@dataclass(frozen=True)
class Finding:
    check: str
    level: str
    detail: str
    fix: str = ""


@dataclass
class Clients:
    """boto3 clients of the target account and region."""

    service_quotas: Any
    iam: Any
    ec2: Any
    ssm: Any
    lambda_: Any
    ce: Any


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def spot_vcpus_needed(settings: Settings) -> tuple[int, int]:
    """vCPUs of GPU spot and of standard spot the deployment may run at once: every cluster at
    ``max_nodes`` of its largest type, and the CPU partitions at ``cpu_max_nodes``."""
    gpu = sum(
        settings.max_nodes * max(catalog.INSTANCE_TYPES[t].vcpus for t in types)
        for types in settings.gpu_types.values()
    )
    cpu_each = settings.cpu_max_nodes * max(
        catalog.INSTANCE_TYPES[t].vcpus for t in settings.cpu_types
    )
    return gpu, cpu_each * len(settings.gpus)


def _quota(clients: Clients, code: tuple[str, str]) -> float | None:
    service, quota = code
    try:
        answer = clients.service_quotas.get_service_quota(ServiceCode=service, QuotaCode=quota)
    except ClientError as err:
        if _error_code(err) != "NoSuchResourceException":
            raise
        answer = clients.service_quotas.get_aws_default_service_quota(
            ServiceCode=service, QuotaCode=quota
        )
    value = answer.get("Quota", {}).get("Value")
    return None if value is None else float(value)


def check_spot_quotas(clients: Clients, settings: Settings) -> list[Finding]:
    gpu_needed, cpu_needed = spot_vcpus_needed(settings)
    findings = []
    for name, code, needed, family in (
        ("G/VT spot vCPU quota", G_VT_SPOT_QUOTA, gpu_needed, "GPU"),
        ("standard spot vCPU quota", STANDARD_SPOT_QUOTA, cpu_needed, "CPU"),
    ):
        have = _quota(clients, code)
        request = (
            f"aws service-quotas request-service-quota-increase --region {settings.region} "
            f"--service-code {code[0]} --quota-code {code[1]} --desired-value {needed}"
        )
        if have is None:
            findings.append(Finding(name, WARNING, "Service Quotas did not say", request))
        elif have == 0:
            findings.append(
                Finding(
                    name,
                    BLOCKER,
                    f"0 vCPUs: no {family} spot instance can start ({needed} needed for "
                    f"max_nodes={settings.max_nodes} of the largest types)",
                    request,
                )
            )
        elif have < needed:
            findings.append(
                Finding(
                    name,
                    WARNING,
                    f"{have:g} vCPUs of {needed} needed at full scale: fewer nodes run at once",
                    request,
                )
            )
        else:
            findings.append(Finding(name, OK, f"{have:g} vCPUs (>= {needed} needed)"))
    return findings


def check_service_linked_roles(clients: Clients, settings: Settings) -> list[Finding]:
    findings = []
    for service, role in SERVICE_LINKED_ROLES.items():
        try:
            clients.iam.get_role(RoleName=role)
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            level = WARNING if service == "ecs.amazonaws.com" else BLOCKER
            created_by = (
                "the deploy creates it (a custom resource), or"
                if service == "ecs.amazonaws.com"
                else "needed before the first spot launch:"
            )
            findings.append(
                Finding(
                    f"service-linked role {role}",
                    level,
                    "missing",
                    f"{created_by} aws iam create-service-linked-role --aws-service-name {service}",
                )
            )
            continue
        findings.append(Finding(f"service-linked role {role}", OK, "present"))
    return findings


def check_type_offerings(clients: Clients, settings: Settings) -> list[Finding]:
    """Which configured zones offer none of a group's types (a node group there never starts)."""
    zones = (
        list(settings.azs)
        or [
            z["ZoneName"]
            for z in clients.ec2.describe_availability_zones(
                Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}]
            )["AvailabilityZones"]
        ][: settings.az_count]
    )
    groups = {f"{n}-GPU types": types for n, types in settings.gpu_types.items()}
    groups["CPU types"] = settings.cpu_types
    findings = []
    for group, types in groups.items():
        offered: dict[str, set[str]] = {z: set() for z in zones}
        paginator = clients.ec2.get_paginator("describe_instance_type_offerings")
        for page in paginator.paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": list(types)}],
        ):
            for offer in page["InstanceTypeOfferings"]:
                if offer["Location"] in offered:
                    offered[offer["Location"]].add(offer["InstanceType"])
        empty = sorted(z for z, have in offered.items() if not have)
        if len(empty) == len(zones):
            findings.append(
                Finding(
                    f"{group} in zones",
                    BLOCKER,
                    f"none of {', '.join(types)} is offered in {', '.join(zones)}",
                    "choose other types (-c gpu_types_N=...) or zones (-c azs=...)",
                )
            )
        elif empty:
            findings.append(
                Finding(
                    f"{group} in zones",
                    WARNING,
                    f"{', '.join(empty)} offer none of {', '.join(types)}: launches use the "
                    "other zones",
                    "leave those zones out with -c azs=... to keep the VPC small",
                )
            )
        else:
            findings.append(Finding(f"{group} in zones", OK, f"offered in {', '.join(zones)}"))
    return findings


def check_lambda_concurrency(clients: Clients, settings: Settings) -> list[Finding]:
    limit = clients.lambda_.get_account_settings()["AccountLimit"]
    unreserved = int(limit.get("UnreservedConcurrentExecutions", 0))
    if unreserved < 2:
        return [
            Finding(
                "Lambda concurrency",
                BLOCKER,
                f"{unreserved} unreserved concurrent executions: the cost and teardown "
                "functions cannot run",
                "release reserved concurrency elsewhere, or request an increase of "
                "'Concurrent executions' (Service Quotas, L-B99A9384)",
            )
        ]
    return [Finding("Lambda concurrency", OK, f"{unreserved} unreserved (the stack reserves none)")]


def check_cdk_bootstrap(clients: Clients, settings: Settings) -> list[Finding]:
    fix = f"node_modules/.bin/cdk bootstrap aws://{settings.account or 'ACCOUNT'}/{settings.region}"
    try:
        value = clients.ssm.get_parameter(Name=CDK_BOOTSTRAP_PARAMETER)["Parameter"]["Value"]
    except ClientError as err:
        if _error_code(err) != "ParameterNotFound":
            raise
        return [Finding("CDK bootstrap", BLOCKER, f"not bootstrapped in {settings.region}", fix)]
    version = int(value) if str(value).isdigit() else 0
    if version < MIN_CDK_BOOTSTRAP_VERSION:
        return [
            Finding(
                "CDK bootstrap",
                BLOCKER,
                f"version {value}, the CDK CLI needs {MIN_CDK_BOOTSTRAP_VERSION} or newer",
                fix,
            )
        ]
    return [Finding("CDK bootstrap", OK, f"version {version}")]


def check_cost_allocation_tags(clients: Clients, settings: Settings) -> list[Finding]:
    try:
        answer = clients.ce.list_cost_allocation_tags(TagKeys=list(COST_TAGS))
    except ClientError as err:
        return [
            Finding(
                "cost allocation tags",
                WARNING,
                f"Cost Explorer did not answer ({_error_code(err)}): billed figures per job are "
                "unavailable until it does",
                "enable Cost Explorer in the Billing console (payer account)",
            )
        ]
    active = {t["TagKey"] for t in answer.get("CostAllocationTags", []) if t["Status"] == "Active"}
    missing = [t for t in COST_TAGS if t not in active]
    if missing:
        keys = " ".join(f"TagKey={t},Status=Active" for t in missing)
        return [
            Finding(
                "cost allocation tags",
                WARNING,
                f"not active: {', '.join(missing)} (the bill cannot be split per job until they "
                "are; they count from activation on, and appear only after first use)",
                f"aws ce update-cost-allocation-tags-status --cost-allocation-tags-status {keys}",
            )
        ]
    return [Finding("cost allocation tags", OK, "active")]


def check_docker(
    _clients: Clients,
    _settings: Settings,
    *,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> list[Finding]:
    """`cdk deploy` builds the controller image: a Docker engine must answer on this machine."""
    if shutil.which("docker") is None:
        return [
            Finding(
                "Docker (for cdk deploy)",
                BLOCKER,
                "no docker command on this machine",
                "install Docker; cdk deploy builds the Slurm image",
            )
        ]
    probe = run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return [
            Finding(
                "Docker (for cdk deploy)",
                BLOCKER,
                "the docker command finds no engine",
                "start the Docker engine (scripts/setup-docker.sh starts one on Debian)",
            )
        ]
    return [Finding("Docker (for cdk deploy)", OK, "an engine answers")]


ACCOUNT_CHECKS: tuple[Callable[[Clients, Settings], list[Finding]], ...] = (
    check_spot_quotas,
    check_service_linked_roles,
    check_type_offerings,
    check_lambda_concurrency,
    check_cdk_bootstrap,
    check_cost_allocation_tags,
)


def run_checks(
    clients: Clients,
    settings: Settings,
    checks: Iterable[Callable[[Clients, Settings], list[Finding]]] = ACCOUNT_CHECKS,
) -> list[Finding]:
    """Every check; one whose AWS call fails becomes a warning naming the call, not a crash."""
    findings: list[Finding] = []
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            findings += check(clients, settings)
        except ClientError as err:
            message = err.response.get("Error", {}).get("Message", "")
            findings.append(
                Finding(name, WARNING, f"could not check: {_error_code(err)} {message}".strip())
            )
        except BotoCoreError as err:
            findings.append(Finding(name, WARNING, f"could not check: {err}"))
    return findings
