"""Would AWS allow the power-save programs' calls? Each is sent with ``DryRun=True``, with the
parameters the programs themselves build, so the answer covers the launch template, the
overrides and the tags the real launch carries, and nothing is launched, tagged or terminated.

EC2 answers a dry run with an error either way: ``DryRunOperation`` means the call would have
been allowed, ``UnauthorizedOperation`` that a policy denies it (its message carries an encoded
reason that STS DecodeAuthorizationMessage turns into the policy evaluation, when the caller may
decode). Anything else (a malformed parameter, a template that does not exist) is recorded as
an error with EC2's words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import tags
from ..powersave import ec2 as fleet
from ..powersave.config import NodeGroup, PowerSaveConfig

ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"
OUTCOMES = (ALLOWED, DENIED, ERROR)

DRY_RUN_ALLOWED = "DryRunOperation"
DRY_RUN_DENIED = "UnauthorizedOperation"
ENCODED_MARKER = "Encoded authorization failure message:"
PROBE_NODE = "selftest-probe"
"""The node name the dry-run CreateTags would give: never a real node's name."""
PLACEHOLDER_INSTANCE_ID = "i-00000000000000000"
"""Used when the cluster has never had an instance: EC2 then answers "not found" for terminate
and tag, which says nothing about permissions, and the outcome is recorded as such."""


@dataclass(frozen=True)
class CheckOutcome:
    """One dry-run call and what EC2 said."""

    program: str
    """Which program makes the call (resume, suspend)."""
    action: str
    """IAM action, e.g. ec2:CreateFleet."""
    target: str
    """What the call was about, in words (partition, template, types, subnets; instance)."""
    outcome: str
    """allowed, denied or error."""
    code: str = ""
    reason: str = ""
    """Why it was denied (the decoded policy evaluation when STS would decode it) or failed."""

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckOutcome:
        fields = ("program", "action", "target", "outcome", "code", "reason")
        return cls(**{name: str(data.get(name, "")) for name in fields})


Decoder = Callable[[str], str | None]
"""Encoded authorization message -> the decoded policy evaluation, or None."""


def sts_decoder(sts: Any) -> Decoder:
    """Decode with STS; None when the caller may not decode (or STS is out of reach)."""

    def decode(encoded: str) -> str | None:
        try:
            decoded = sts.decode_authorization_message(EncodedMessage=encoded)["DecodedMessage"]
        except (ClientError, BotoCoreError):
            return None
        return summarize_decoded(decoded)

    return decode


def summarize_decoded(decoded: str) -> str:
    """The parts of STS's decoded JSON a person acts on: action, resource, whether an explicit
    deny or no allow, and the context the request carried."""
    try:
        data = json.loads(decoded)
    except ValueError:
        return decoded
    if not isinstance(data, dict):
        return decoded
    context = data.get("context") or {}
    parts = [
        f"{context.get('action', '?')} on {context.get('resource', '?')}",
        "explicitly denied" if data.get("explicitDeny") else "no policy allows it",
    ]
    conditions = (context.get("conditions") or {}).get("items") or []
    carried = [
        f"{(item.get('key') or '')}="
        + ",".join(str(v.get("value", "")) for v in (item.get("values") or {}).get("items") or [])
        for item in conditions
        if isinstance(item, dict)
    ]
    if carried:
        parts.append("request carried " + "; ".join(carried))
    return ", ".join(parts)


def classify(err: ClientError, decode: Decoder | None = None) -> tuple[str, str, str]:
    """(outcome, code, reason) of a dry run's answer."""
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", ""))
    if code == DRY_RUN_ALLOWED:
        return ALLOWED, code, ""
    if code == DRY_RUN_DENIED:
        head, marker, encoded = message.partition(ENCODED_MARKER)
        decoded = decode(encoded.strip()) if marker and decode else None
        if decoded:
            return DENIED, code, decoded
        if marker:
            return (
                DENIED,
                code,
                (
                    f"{head.strip()} (decode the reason: aws sts decode-authorization-message "
                    f"--encoded-message {encoded.strip()})"
                ),
            )
        return DENIED, code, message
    return ERROR, code, message


def _ask(call: Callable[[], Any], decode: Decoder | None) -> tuple[str, str, str]:
    try:
        call()
    except ClientError as err:
        return classify(err, decode)
    except BotoCoreError as err:
        return ERROR, type(err).__name__, str(err)
    return ERROR, "NoDryRunAnswer", "EC2 carried the call out instead of answering the dry run"


def probe_instance(ec2: Any, cluster: str) -> str:
    """An instance of this cluster to aim terminate and tag at: the newest carrying the cluster's
    tag in any state (terminated ones stay listed for about an hour), else a placeholder."""
    newest: tuple[float, str] | None = None
    filters = [{"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]}]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                launched = raw.get("LaunchTime")
                when = launched.timestamp() if launched else 0.0
                if newest is None or when > newest[0]:
                    newest = (when, raw["InstanceId"])
    return newest[1] if newest else PLACEHOLDER_INSTANCE_ID


def check_powersave(
    ec2: Any, config: PowerSaveConfig, *, decode: Decoder | None = None
) -> list[CheckOutcome]:
    """Dry-run every call the resume and suspend programs make, with their own parameters."""
    by_tag = [{"Name": f"tag:{tags.CLUSTER}", "Values": [config.cluster]}]
    outcomes = [
        _outcome(
            "suspend",
            "ec2:DescribeInstances",
            "this cluster's instances, by tag",
            _ask(lambda: ec2.describe_instances(DryRun=True, Filters=by_tag), decode),
        )
    ]
    outcomes += [_fleet_outcome(ec2, config, group, decode) for group in config.groups.values()]
    try:
        instance_id = probe_instance(ec2, config.cluster)
    except fleet.AWS_ERRORS as err:
        failed = (ERROR, "", fleet.aws_error_text(err))
        return [*outcomes, _outcome("suspend", "ec2:DescribeInstances", "an instance", failed)]
    where = (
        f"instance {instance_id} of {config.cluster}"
        if instance_id != PLACEHOLDER_INSTANCE_ID
        else f"no instance of {config.cluster} yet ({instance_id})"
    )
    node_tags = [
        {"Key": tags.NODE, "Value": PROBE_NODE},
        {"Key": tags.INSTANCE_TYPE, "Value": "selftest"},
    ]
    outcomes.append(
        _outcome(
            "resume",
            "ec2:CreateTags",
            f"node-name tags on {where}",
            _ask(
                lambda: ec2.create_tags(DryRun=True, Resources=[instance_id], Tags=node_tags),
                decode,
            ),
        )
    )
    outcomes.append(
        _outcome(
            "suspend",
            "ec2:TerminateInstances",
            where,
            _ask(lambda: ec2.terminate_instances(DryRun=True, InstanceIds=[instance_id]), decode),
        )
    )
    return outcomes


def check_node(ec2: Any, instance_id: str, *, decode: Decoder | None = None) -> list[CheckOutcome]:
    """Dry-run every EC2 call a node makes with the node role, on the node's own instance: the
    Prolog's job tags, the Epilog's read-back and removal of them, and an orphaned node ending
    itself (relion_spot.node.job_tags, relion_spot.node.orphan)."""
    job_tags = [{"Key": key, "Value": "selftest"} for key in tags.JOB_TAG_KEYS]
    own = f"this node ({instance_id})"
    return [
        _outcome(
            "prolog",
            "ec2:CreateTags",
            f"job tags on {own}",
            _ask(lambda: ec2.create_tags(DryRun=True, Resources=[instance_id], Tags=job_tags),
                 decode),
        ),
        _outcome(
            "epilog",
            "ec2:DescribeTags",
            f"the job tag of {own}",
            _ask(
                lambda: ec2.describe_tags(
                    DryRun=True, Filters=[{"Name": "resource-id", "Values": [instance_id]}]
                ),
                decode,
            ),
        ),
        _outcome(
            "epilog",
            "ec2:DeleteTags",
            f"job tags on {own}",
            _ask(
                lambda: ec2.delete_tags(
                    DryRun=True,
                    Resources=[instance_id],
                    Tags=[{"Key": key} for key in tags.JOB_TAG_KEYS],
                ),
                decode,
            ),
        ),
        _outcome(
            "orphan",
            "ec2:TerminateInstances",
            own,
            _ask(lambda: ec2.terminate_instances(DryRun=True, InstanceIds=[instance_id]), decode),
        ),
    ]  # fmt: skip


SELFTEST_REPORT = "selftest"
"""The submission id of the node's check of its report put: no submission has it (a
submission's is a UUID), so the relay never reads it; the item expires by the table's TTL."""


def check_report_put(dynamodb: Any, table: str, instance_arn: str) -> CheckOutcome:
    """The node's report forwarder's PutItem (relion_spot.intake.report), made for real:
    DynamoDB has no dry run. It puts this instance's own report item for ``SELFTEST_REPORT``,
    so a deployed node proves that IAM resolves ``${ec2:SourceInstanceARN}`` in the key
    condition the forwarder depends on."""
    from ..intake.config import report_key
    from ..intake.report import JobReport, ReportPublisher, compact

    publisher = ReportPublisher(table=table, instance_arn=instance_arn, client=dynamodb)
    key = report_key(instance_arn, SELFTEST_REPORT)
    try:
        publisher.publish(SELFTEST_REPORT, "0", JobReport(compact({}, state="RUNNING"), ""))
    except ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        outcome = DENIED if code == "AccessDeniedException" else ERROR
        return CheckOutcome(
            "forwarder", "dynamodb:PutItem", key, outcome, code, error.get("Message", "")
        )
    except BotoCoreError as err:
        return CheckOutcome(
            "forwarder", "dynamodb:PutItem", key, ERROR, type(err).__name__, str(err)
        )
    return CheckOutcome("forwarder", "dynamodb:PutItem", key, ALLOWED, "", "")


def _fleet_outcome(
    ec2: Any, config: PowerSaveConfig, group: NodeGroup, decode: Decoder | None
) -> CheckOutcome:
    request = fleet.fleet_request(
        cluster=config.cluster,
        group=group,
        instance_types=group.instance_types,
        subnets=config.subnets,
        count=1,
    )
    target = (
        f"{group.partition}: {group.launch_template_id}, {len(group.instance_types)} type(s) x "
        f"{len(config.subnets)} subnet(s), spot, tagged {tags.CLUSTER}={config.cluster}"
    )
    answer = _ask(lambda: ec2.create_fleet(DryRun=True, **request), decode)
    return _outcome("resume", "ec2:CreateFleet", target, answer)


def _outcome(program: str, action: str, target: str, answer: tuple[str, str, str]) -> CheckOutcome:
    outcome, code, reason = answer
    return CheckOutcome(program, action, target, outcome, code, reason)


def all_allowed(outcomes: Sequence[CheckOutcome]) -> bool:
    return bool(outcomes) and all(o.outcome == ALLOWED for o in outcomes)
