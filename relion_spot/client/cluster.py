"""Finding a deployed cluster from its stack name, and turning AWS failures into one line.

``find_cluster("relion-spot-gpu1")`` reads the stack's outputs (DescribeStacks) into a
``ClusterHandle``. Every failure a user can cause or meet (no such stack, no or expired
credentials, no region, a stack deployed by an incompatible version) is a ``ClusterError``
whose message is meant to be printed as it is. ``AWS_ENDPOINT_URL`` is honoured by boto3 itself,
so the same code talks to an emulated cloud.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from .. import __version__

STACK_ENV = "RELION_SPOT_STACK"
REQUIRED_OUTPUTS = {
    "queue_url": "IntakeQueueUrl",
    "intake_table": "IntakeTable",
    "costs_table": "JobCostsTable",
    "records_table": "JobRecordsTable",
    "cluster_name": "ClusterName",
    "version": "Version",
}
OPTIONAL_OUTPUTS = {
    "ecs_cluster": "EcsClusterName",
    "controller_service": "ControllerServiceName",
    "monthly_budget_usd": "MonthlyBudgetUsd",
    "dead_letter_queue_url": "IntakeDeadLetterQueueUrl",
    "exchange_bucket": "ExchangeBucket",
}
CREDENTIAL_ERRORS = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AuthFailure",
    }
)
MAX_LISTED_STACKS = 10


class ClusterError(RuntimeError):
    """Something the user must fix; the message says what, in one line."""


@dataclass(frozen=True)
class ClusterHandle:
    """What the lab's commands need of a deployed cluster stack."""

    stack: str
    region: str
    queue_url: str
    intake_table: str
    costs_table: str
    records_table: str
    cluster_name: str
    version: str
    ecs_cluster: str = ""
    controller_service: str = ""
    monthly_budget_usd: str = ""
    """The cap as deployed ("250.00"), "none", or empty from a stack older than the cap."""
    dead_letter_queue_url: str = ""
    exchange_bucket: str = ""
    """Where ``relion-spot pull`` finds exported results; empty from a stack older than it."""


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _message(err: ClientError) -> str:
    return " ".join(str(err.response.get("Error", {}).get("Message", "")).split())[:200]


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Credential, region and connection failures inside the block -> ClusterError."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise ClusterError(
            "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) for the account the cluster is in"
        ) from None
    except NoRegionError:
        raise ClusterError(
            "no AWS region: give --region or set AWS_DEFAULT_REGION to the cluster's region"
        ) from None
    except EndpointConnectionError as err:
        raise ClusterError(f"cannot reach AWS while {what}: {err}") from None
    except ClientError as err:
        code = _code(err)
        if code in CREDENTIAL_ERRORS:
            raise ClusterError(
                f"AWS refused your credentials ({code}) while {what}: they are expired or "
                "invalid; refresh them (e.g. aws sso login) and try again"
            ) from None
        if code in ("AccessDenied", "AccessDeniedException"):
            raise ClusterError(f"access denied while {what}: {_message(err)}") from None
        raise ClusterError(f"AWS error while {what}: {code}: {_message(err)}") from None
    except BotoCoreError as err:
        raise ClusterError(f"AWS error while {what}: {err}") from None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.strip().split(".")[:2])


def _relion_spot_stacks(cloudformation: Any) -> list[str]:
    """Names of the stacks in this region that look like relion-spot clusters (first page)."""
    try:
        stacks = cloudformation.describe_stacks().get("Stacks", [])
    except (ClientError, BotoCoreError):
        return []
    names = [
        s["StackName"]
        for s in stacks
        if any(o.get("OutputKey") == "ClusterName" for o in s.get("Outputs") or [])
        and any(o.get("OutputKey") == "IntakeQueueUrl" for o in s.get("Outputs") or [])
    ]
    return sorted(names)[:MAX_LISTED_STACKS]


def find_cluster(stack: str | None, *, session: Any) -> ClusterHandle:
    """The cluster deployed as CloudFormation stack ``stack`` (in the session's region)."""
    if not stack:
        raise ClusterError(
            f"which cluster? give --stack <stack name> (e.g. relion-spot-gpu1) or set {STACK_ENV}"
        )
    region = session.region_name
    if not region:
        raise ClusterError(
            "no AWS region: give --region or set AWS_DEFAULT_REGION to the cluster's region"
        )
    cloudformation = session.client("cloudformation")
    with aws_errors(f"looking up stack {stack}"):
        try:
            found = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as err:
            if _code(err) != "ValidationError" or "does not exist" not in _message(err):
                raise
            found = []
    if not found:
        known = _relion_spot_stacks(cloudformation)
        hint = (
            f"; relion-spot cluster stacks there: {', '.join(known)}"
            if known
            else "; no relion-spot cluster stack is deployed there"
        )
        raise ClusterError(f"stack {stack!r} not found in {region}{hint}")
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in found[0].get("Outputs") or []}
    missing = [key for key in REQUIRED_OUTPUTS.values() if not outputs.get(key)]
    if missing:
        raise ClusterError(
            f"stack {stack!r} is not a relion-spot cluster stack (or is not fully deployed): "
            f"it has no output {missing[0]}"
        )
    deployed = outputs["Version"]
    if _major_minor(deployed) != _major_minor(__version__):
        raise ClusterError(
            f"stack {stack!r} was deployed with relion-spot {deployed}, this CLI is "
            f"{__version__}: use the relion-spot {'.'.join(_major_minor(deployed))}.x CLI, or "
            "upgrade the stack (cdk deploy) with this version"
        )
    return handle_from_outputs(stack, region, outputs)


def handle_from_outputs(stack: str, region: str, outputs: dict[str, str]) -> ClusterHandle:
    """The handle a stack's outputs (output key -> value) describe."""
    values = {name: outputs[key] for name, key in REQUIRED_OUTPUTS.items()}
    values |= {name: outputs.get(key, "") for name, key in OPTIONAL_OUTPUTS.items()}
    return ClusterHandle(stack=stack, region=region, **values)
