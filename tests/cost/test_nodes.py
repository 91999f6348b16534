"""The nodes-running gauge, against moto."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from relion_spot import tags
from relion_spot.cost.handler import handle
from relion_spot.cost.nodes import NODES_RUNNING_METRIC

from .conftest import AMI, CLUSTER


def _launch(account, *, instance_type: str, spot: bool, cluster: str = CLUSTER) -> str:
    request = {
        "ImageId": AMI,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": instance_type,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": tags.CLUSTER, "Value": cluster}]}
        ],
    }
    if spot:
        request["InstanceMarketOptions"] = {"MarketType": "spot"}
    return account.ec2.run_instances(**request)["Instances"][0]["InstanceId"]


def _published(account) -> dict[tuple[str, str, str], float]:
    """(cluster, type, market) -> the one value published for it."""
    cloudwatch = account.clients.cloudwatch
    found = {}
    for metric in cloudwatch.list_metrics(Namespace="RelionSpot")["Metrics"]:
        assert metric["MetricName"] == NODES_RUNNING_METRIC
        dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
        assert set(dimensions) == {"Cluster", "InstanceType", "Market"}
        points = cloudwatch.get_metric_statistics(
            Namespace="RelionSpot",
            MetricName=NODES_RUNNING_METRIC,
            Dimensions=metric["Dimensions"],
            StartTime=datetime.now(UTC) - timedelta(hours=1),
            EndTime=datetime.now(UTC) + timedelta(hours=1),
            Period=3600,
            Statistics=["Maximum", "SampleCount"],
            Unit="Count",
        )["Datapoints"]
        assert len(points) == 1 and points[0]["SampleCount"] == 1
        key = (dimensions["Cluster"], dimensions["InstanceType"], dimensions["Market"])
        found[key] = points[0]["Maximum"]
    return found


def test_running_nodes_are_counted_per_type_and_market(account):
    _launch(account, instance_type="g5.xlarge", spot=True)
    _launch(account, instance_type="g5.xlarge", spot=True)
    _launch(account, instance_type="g6.xlarge", spot=False)
    stopped = _launch(account, instance_type="g6.xlarge", spot=True)
    account.ec2.terminate_instances(InstanceIds=[stopped])
    _launch(account, instance_type="g5.xlarge", spot=True, cluster="another-cluster")

    outcome = handle({"action": "count-nodes"}, account.service(), now=time.time())

    assert outcome["nodes_running"] == 3
    assert outcome["jobs_priced"] == 0 and outcome["skipped"] == 0
    assert _published(account) == {
        (CLUSTER, "g5.xlarge", "spot"): 2.0,
        (CLUSTER, "g6.xlarge", "on-demand"): 1.0,
    }


def test_an_idle_cluster_publishes_nothing(account):
    """A custom metric bills for each hour it receives data: no nodes, no data, no bill."""
    gone = _launch(account, instance_type="g5.xlarge", spot=True)
    account.ec2.terminate_instances(InstanceIds=[gone])
    outcome = handle({"action": "count-nodes"}, account.service(), now=time.time())
    assert outcome["nodes_running"] == 0
    assert account.clients.cloudwatch.list_metrics(Namespace="RelionSpot")["Metrics"] == []


def test_the_hourly_run_counts_nodes_too(account):
    _launch(account, instance_type="g5.xlarge", spot=True)
    outcome = handle({"action": "schedule"}, account.service(), now=time.time())
    assert outcome["nodes_running"] == 1
    assert _published(account) == {(CLUSTER, "g5.xlarge", "spot"): 1.0}
