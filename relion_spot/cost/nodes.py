"""Nodes running per instance type and market: the gauge the cluster dashboard graphs.

CloudWatch has no metric per tag, so the cost function counts the cluster's running instances
on its schedule and publishes the count. Only non-zero counts are published: a custom metric
bills for the hours it receives data, so an idle cluster adds nothing to the bill (the
dashboard fills the gaps with zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from relion_spot.cost.instances import InstanceInfo

NODES_RUNNING_METRIC = "NodesRunning"
DIMENSIONS = ("Cluster", "InstanceType", "Market")
"""The metric's dimensions, in the order a schema-form SEARCH names them."""
MAX_DATA_PER_REQUEST = 1000


def count_running(instances: Iterable[InstanceInfo]) -> Counter[tuple[str, str]]:
    """(instance type, market) -> how many of ``instances`` are running."""
    return Counter((i.instance_type, i.market) for i in instances if i.state == "running")


def publish_node_counts(
    cloudwatch: Any,
    namespace: str,
    cluster: str,
    counts: Counter[tuple[str, str]],
    *,
    now: float,
) -> int:
    """Put one data point per (type, market) with nodes; returns how many were put."""
    timestamp = datetime.fromtimestamp(now, UTC)
    data = [
        {
            "MetricName": NODES_RUNNING_METRIC,
            "Dimensions": [
                {"Name": name, "Value": value}
                for name, value in zip(DIMENSIONS, (cluster, instance_type, market), strict=True)
            ],
            "Timestamp": timestamp,
            "Value": float(count),
            "Unit": "Count",
        }
        for (instance_type, market), count in sorted(counts.items())
        if count > 0
    ]
    for offset in range(0, len(data), MAX_DATA_PER_REQUEST):
        cloudwatch.put_metric_data(
            Namespace=namespace, MetricData=data[offset : offset + MAX_DATA_PER_REQUEST]
        )
    return len(data)
