"""The storage I/O each attempt's node metered, read back from CloudWatch.

A node's Epilog (relion_spot.node.storage_io) publishes two metrics per job and node, with
Cluster and JobId dimensions, timestamped at the attempt's Prolog. Attempts of one job are at
least Slurm's credential expiry (120 s) apart, so a data point belongs to the latest attempt that
started no later than a minute after it (the Prolog runs just after Slurm's START).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from relion_spot.cost.pricing import Attempt, StorageIo

READ_METRIC = "SharedStorageReadBytes"
WRITE_METRIC = "SharedStorageWriteBytes"
PERIOD = 60
"""CloudWatch keeps one-minute sums for 15 days, longer than the cost function looks back."""
SLACK = 60
"""Seconds a Prolog may lag Slurm's START (and clocks differ) and still count as that attempt's."""
QUERIES_PER_CALL = 500
"""GetMetricData's limit; two queries per job."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for offset in range(0, len(items), size):
        yield items[offset : offset + size]


class StorageIoReader:
    """Reads the metered bytes of many jobs in few GetMetricData calls."""

    def __init__(self, cloudwatch: Any, namespace: str, cluster: str):
        self._cloudwatch = cloudwatch
        self._namespace = namespace
        self._cluster = cluster
        self.requests = 0

    def _query(self, query_id: str, metric: str, job_id: str) -> dict[str, Any]:
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": self._namespace,
                    "MetricName": metric,
                    "Dimensions": [
                        {"Name": "Cluster", "Value": self._cluster},
                        {"Name": "JobId", "Value": job_id},
                    ],
                },
                "Period": PERIOD,
                "Stat": "Sum",
            },
            "ReturnData": True,
        }

    def points(
        self, job_ids: Sequence[str], start: int, end: int
    ) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """job id -> metric -> (timestamp, bytes) over [start, end]."""
        found: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
            lambda: {READ_METRIC: [], WRITE_METRIC: []}
        )
        names = {}
        queries = []
        for index, job_id in enumerate(sorted(set(job_ids))):
            for code, metric in (("r", READ_METRIC), ("w", WRITE_METRIC)):
                query_id = f"{code}{index}"
                names[query_id] = (job_id, metric)
                queries.append(self._query(query_id, metric, job_id))
        for chunk in _chunks(queries, QUERIES_PER_CALL):
            request: dict[str, Any] = {
                "MetricDataQueries": list(chunk),
                "StartTime": datetime.fromtimestamp(start, UTC),
                "EndTime": datetime.fromtimestamp(end, UTC),
            }
            for page in self._cloudwatch.get_paginator("get_metric_data").paginate(**request):
                self.requests += 1
                for result in page.get("MetricDataResults", []):
                    job_id, metric = names[result["Id"]]
                    found[job_id][metric].extend(
                        (stamp.timestamp(), float(value))
                        for stamp, value in zip(
                            result.get("Timestamps", []), result.get("Values", []), strict=True
                        )
                    )
        return dict(found)

    def attach(self, attempts: Sequence[Attempt]) -> list[Attempt]:
        """The attempts with the bytes their nodes metered (unmetered ones unchanged)."""
        if not attempts:
            return list(attempts)
        start = min(a.start for a in attempts) - PERIOD - SLACK
        end = max(a.end for a in attempts) + PERIOD + SLACK
        found = self.points([a.job_id for a in attempts], start, end)
        by_job: dict[str, list[Attempt]] = defaultdict(list)
        for attempt in attempts:
            by_job[attempt.job_id].append(attempt)
        totals: dict[tuple[str, str], list[int]] = {}
        for job_id, metrics in found.items():
            ordered = sorted(by_job.get(job_id, []), key=lambda a: a.start)
            for column, metric in enumerate((READ_METRIC, WRITE_METRIC)):
                for stamp, value in metrics[metric]:
                    owner = None
                    for attempt in ordered:
                        if attempt.start <= stamp + SLACK:
                            owner = attempt
                    if owner is None:
                        continue
                    slot = totals.setdefault((job_id, owner.key), [0, 0])
                    slot[column] += int(value)
        return [
            dataclasses.replace(
                attempt, storage_io=StorageIo(*totals[(attempt.job_id, attempt.key)])
            )
            if (attempt.job_id, attempt.key) in totals
            else attempt
            for attempt in attempts
        ]
