"""What the bill says: CloudWatch metrics of new estimates and Cost Explorer's billed cost per
job, stored beside the estimate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from relion_spot import tags
from relion_spot.cost.pricing import JobCost
from relion_spot.cost.store import CostStore

log = logging.getLogger(__name__)

JOB_COST_METRIC = "JobCostUSD"
RECLAIMED_COST_METRIC = "ReclaimedCostUSD"
COST_METRIC = "UnblendedCost"


def publish_estimate_changes(
    cloudwatch: Any,
    namespace: str,
    cluster: str,
    changes: Sequence[tuple[JobCost, dict[str, Any]]],
) -> int:
    """Publish how much each written job's estimate moved (its whole estimate the first time),
    so a Sum of the metric over any period equals the estimates added in it: a re-priced job
    adds only its difference, an unchanged job adds nothing. One statistic set per metric and
    run (count, sum, min, max of the moves) keeps it to one request however many jobs."""
    moves: dict[str, list[float]] = {JOB_COST_METRIC: [], RECLAIMED_COST_METRIC: []}
    for cost, before in changes:
        first = "fingerprint" not in before
        for metric, now, previous in (
            (JOB_COST_METRIC, cost.total_usd, before.get("estimate_usd", 0.0)),
            (RECLAIMED_COST_METRIC, cost.reclaimed_usd, before.get("reclaimed_usd", 0.0)),
        ):
            delta = round(now - float(previous or 0.0), 10)
            if delta or first:
                moves[metric].append(delta)
    data = [
        {
            "MetricName": metric,
            "Dimensions": [{"Name": "Cluster", "Value": cluster}],
            "StatisticValues": {
                "SampleCount": float(len(values)),
                "Sum": round(sum(values), 10),
                "Minimum": min(values),
                "Maximum": max(values),
            },
            "Unit": "None",
        }
        for metric, values in moves.items()
        if values
    ]
    if data:
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data)
    return sum(len(v) for v in moves.values())


def _tag_value(key: str, tag_key: str) -> str | None:
    prefix = f"{tag_key}$"
    return key[len(prefix) :] if key.startswith(prefix) else None


def billed_by_job(ce: Any, cluster: str, first_day: date, end_day: date) -> dict[str, dict]:
    """Cost Explorer's unblended cost per job id and day, for days [first_day, end_day)."""
    amounts: dict[str, dict[str, float]] = {}
    request: dict[str, Any] = {
        "TimePeriod": {"Start": first_day.isoformat(), "End": end_day.isoformat()},
        "Granularity": "DAILY",
        "Metrics": [COST_METRIC],
        "Filter": {"Tags": {"Key": tags.CLUSTER, "Values": [cluster], "MatchOptions": ["EQUALS"]}},
        "GroupBy": [{"Type": "TAG", "Key": tags.CLUSTER}, {"Type": "TAG", "Key": tags.JOB_ID}],
    }
    while True:
        response = ce.get_cost_and_usage(**request)
        for period in response.get("ResultsByTime", []):
            day = period.get("TimePeriod", {}).get("Start", "")
            for group in period.get("Groups", []):
                keys = group.get("Keys", [])
                group_cluster = next(
                    (v for v in (_tag_value(k, tags.CLUSTER) for k in keys) if v is not None),
                    cluster,
                )
                job_id = next(
                    (v for v in (_tag_value(k, tags.JOB_ID) for k in keys) if v is not None), ""
                )
                if group_cluster != cluster or not job_id or not day:
                    continue
                try:
                    amount = float(group["Metrics"][COST_METRIC]["Amount"])
                except (KeyError, TypeError, ValueError) as err:
                    log.warning("skipping Cost Explorer group %r: %s", group, err)
                    continue
                per_day = amounts.setdefault(job_id, {})
                per_day[day] = round(per_day.get(day, 0.0) + amount, 10)
        token = response.get("NextPageToken")
        if not token:
            return amounts
        request["NextPageToken"] = token


def reconcile(
    ce: Any, store: CostStore, cluster: str, *, today: date, days: int, now: float
) -> dict[str, int]:
    """Store the billed cost of the last ``days`` full days beside each job's estimate."""
    first_day = today - timedelta(days=days)
    billed = billed_by_job(ce, cluster, first_day, today)
    updated = sum(
        store.record_billed(cluster, job_id, by_day, billed_at=now)
        for job_id, by_day in sorted(billed.items())
    )
    return {"billed_jobs": len(billed), "billed_updated": updated}
