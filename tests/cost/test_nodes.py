"""The nodes-running gauge and the per-job cost log line, against moto."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from relion_spot import tags
from relion_spot.cost.handler import JOB_COST_LOG, handle
from relion_spot.cost.nodes import NODES_RUNNING_METRIC

from .conftest import AMI, CLUSTER, write_attempt


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


def test_each_written_job_is_logged_in_the_form_the_dashboard_parses(
    account, reclaimed_job, caplog
):
    from relion_spot.constructs.dashboard import JOB_COST_PATTERN

    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    with caplog.at_level(logging.INFO, logger="relion_spot.cost.handler"):
        handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
        again = handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(JOB_COST_LOG)]
    assert again["jobs_written"] == 0
    assert len(lines) == 1, "an unchanged job is not logged again"

    # Logs Insights names groups (?<name>...); Python spells them (?P<name>...).
    match = re.search(JOB_COST_PATTERN.replace("(?<", "(?P<"), f"[INFO]\t...\t{lines[0]}")
    assert match is not None, lines[0]
    lost, kept = reclaimed_job["expected"]
    assert match["job"] == "41" and match["user"] == "alice"
    assert float(match["estimate_usd"]) == pytest.approx(lost + kept, abs=1e-6)
    assert float(match["reclaimed_usd"]) == pytest.approx(lost, abs=1e-6)
    assert (match["attempts"], match["reclaims"]) == ("2", "1")
