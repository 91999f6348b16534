"""Where permission checks are kept: one item per checker in the cluster's intake table, the
table the lab's commands already read. Its key is not a submission id (those are UUIDs), so the
intake's drainer and ``relion-spot status`` never take it for a submission.

    submission_id  S  "selftest:permissions:<checker>" (controller, or node:<instance id>)
    checked_at     N  epoch seconds of the check
    checks         S  JSON list of CheckOutcome objects
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..intake.config import KEY
from .permissions import CheckOutcome

KEY_PREFIX = "selftest:permissions:"
CONTROLLER = "controller"


@dataclass(frozen=True)
class StoredChecks:
    checker: str
    checked_at: int
    outcomes: list[CheckOutcome]


def item_key(checker: str) -> str:
    return f"{KEY_PREFIX}{checker}"


def store(
    dynamodb: Any,
    table: str,
    checker: str,
    outcomes: Sequence[CheckOutcome],
    *,
    at: float | None = None,
) -> None:
    dynamodb.put_item(
        TableName=table,
        Item={
            KEY: {"S": item_key(checker)},
            "checked_at": {"N": str(int(time.time() if at is None else at))},
            "checks": {"S": json.dumps([o.to_json() for o in outcomes], sort_keys=True)},
        },
    )


def load(dynamodb: Any, table: str, checker: str = CONTROLLER) -> StoredChecks | None:
    item = dynamodb.get_item(
        TableName=table, Key={KEY: {"S": item_key(checker)}}, ConsistentRead=True
    ).get("Item")
    if not item:
        return None
    raw = json.loads(item.get("checks", {}).get("S", "[]"))
    return StoredChecks(
        checker=checker,
        checked_at=int(float(item.get("checked_at", {}).get("N", "0"))),
        outcomes=[CheckOutcome.from_json(entry) for entry in raw if isinstance(entry, dict)],
    )
