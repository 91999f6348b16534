"""What a cluster's month has cost so far: the priced jobs in the job cost table.

A job counts in the month it first started (as ``relion-spot cost --month`` counts it), at the
larger of the cost Lambda's estimate and Cost Explorer's billed figure: a cap errs high.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..cost.months import month_bounds
from ..cost.store import CostStore


def month_of(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m")


def month_spent(dynamodb: Any, costs_table: str, cluster: str, month: str) -> float:
    lower, upper = month_bounds(month)
    total = 0.0
    for item in CostStore(dynamodb, costs_table).items_starting_between(cluster, lower, upper):
        estimate = float(item.get("estimate_usd") or 0.0)
        billed = float(item.get("billed_usd") or 0.0)
        total += max(estimate, billed)
    return round(total, 6)
