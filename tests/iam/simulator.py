"""Runs tests/iam/simulate.mjs once for a whole batch of requests."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .resolver import RolePolicies

SCRIPT = Path(__file__).with_name("simulate.mjs")
REPO_ROOT = SCRIPT.parents[2]


@dataclass(frozen=True)
class Request:
    """One AWS authorization: ``context`` is everything the call means; the simulator sends
    only the keys the action carries for this resource type."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, str | list[str]] = field(default_factory=dict)
    resource_policy: Mapping[str, Any] | None = None
    """The resource's own policy where AWS evaluates one too (a role's trust policy for
    sts:AssumeRole)."""
    session_policy: Mapping[str, Any] | None = None
    """The policy a role session was narrowed to when it was assumed."""


@dataclass(frozen=True)
class Decision:
    decision: str
    resource_type: str | None
    sent: list[str]
    dropped: list[str]
    ignored: list[str]
    errors: Any

    @property
    def allowed(self) -> bool:
        return self.decision == "Allowed"


def simulate(
    principals: Mapping[str, RolePolicies], requests: Mapping[str, Request]
) -> dict[str, Decision]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (scripts/setup.sh installs it)")
    batch = {
        "principals": {
            name: {"arn": role.arn, "policies": role.policies} for name, role in principals.items()
        },
        "requests": [
            {
                "id": request_id,
                "principal": r.principal,
                "action": r.action,
                "resource": r.resource,
                "context": dict(r.context),
                **({"resourcePolicy": dict(r.resource_policy)} if r.resource_policy else {}),
                **({"sessionPolicy": dict(r.session_policy)} if r.session_policy else {}),
            }
            for request_id, r in requests.items()
        ],
    }
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(batch),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"simulate.mjs failed:\n{done.stderr[-4000:]}")
    raw = json.loads(done.stdout)
    return {
        request_id: Decision(
            decision=d["decision"],
            resource_type=d.get("resourceType"),
            sent=list(d.get("sent", [])),
            dropped=list(d.get("dropped", [])),
            ignored=list(d.get("ignoredContextKeys", [])),
            errors=d.get("errors"),
        )
        for request_id, d in raw.items()
    }


def tag_context(prefix: str, tags: Mapping[str, str]) -> dict[str, str | list[str]]:
    """``aws:RequestTag/<k>`` (or ResourceTag) per tag, plus ``aws:TagKeys`` for request tags."""
    context: dict[str, str | list[str]] = {f"aws:{prefix}/{k}": v for k, v in tags.items()}
    if prefix == "RequestTag":
        context["aws:TagKeys"] = sorted(tags)
    return context
