"""The cost Lambda against moto: real boto3 calls, real DynamoDB conditions, moto's prices."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import requests
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from relion_spot import tags
from relion_spot.cost.handler import handle
from relion_spot.cost.store import (
    ATTEMPT_KEY,
    BUCKET_RECORDS,
    BUCKET_SORT_KEY,
    JOB_KEY,
    RECORD,
    bucket_key,
    deserialize,
    hour_of,
    is_bucket_key,
    job_key,
    record_of,
    serialize,
    shard_of,
)

from .conftest import CLUSTER, RECORDS, REGION, cost_item, slurm_env, write_attempt


def test_two_attempts_priced_from_moto_history_with_reclaimed_share(account, reclaimed_job):
    for env in reclaimed_job["attempts"]:
        assert write_attempt(account, env) == "written"
    outcome = handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
    assert outcome["jobs_priced"] == 1 and outcome["jobs_written"] == 1

    item = cost_item(account, "41")
    lost, kept = reclaimed_job["expected"]
    assert item["estimate_usd"] == pytest.approx(lost + kept, abs=1e-9)
    assert item["reclaimed_usd"] == pytest.approx(lost, abs=1e-9)
    assert item["reclaimed_share"] == pytest.approx(lost / (lost + kept), abs=1e-9)
    assert [a["state"] for a in item["attempts"]] == ["NODE_FAIL", "COMPLETED"]
    assert [a["reclaimed"] for a in item["attempts"]] == [True, False]
    nodes = [a["nodes"][0] for a in item["attempts"]]
    assert [(n["instance_type"], n["availability_zone"]) for n in nodes] == [
        ("g5.xlarge", "us-east-1a"),
        ("g6.xlarge", "us-east-1b"),
    ]
    assert [n["share"] for n in nodes] == [1.0, 0.5]
    assert item["instance_ids"] == sorted(reclaimed_job["instances"])
    assert item["user"] == "alice"
    assert item["flags"] == ["storage-io-unmetered"], "no node metered this job's I/O"


def test_record_writer_is_idempotent(account, reclaimed_job):
    env = reclaimed_job["attempts"][0]
    assert write_attempt(account, env) == "written"
    assert write_attempt(account, env) == "duplicate"
    items = [deserialize(i) for i in account.dynamodb.scan(TableName=RECORDS)["Items"]]
    attempts = [i for i in items if not is_bucket_key(i[JOB_KEY])]
    buckets = [i for i in items if is_bucket_key(i[JOB_KEY])]
    assert len(attempts) == 1
    assert len(buckets) == 1 and buckets[0][BUCKET_RECORDS] == {attempts[0][RECORD]}
    record = record_of(attempts[0])
    node = record["nodes"][0]
    assert node["instance_id"] == reclaimed_job["instances"][0]
    assert node["instance_type"] == "g5.xlarge" and node["availability_zone"] == "us-east-1a"
    assert node["launch_time"] > 0 and node["volumes"]


def stream_event(*job_ids: str) -> dict:
    return {
        "Records": [
            {
                "eventSource": "aws:dynamodb",
                "eventName": "INSERT",
                "dynamodb": {"Keys": {JOB_KEY: {"S": job_key(CLUSTER, j)}}},
            }
            for j in job_ids
        ]
    }


def test_duplicate_and_out_of_order_events_give_the_same_totals(account, reclaimed_job):
    service = account.service()
    first, second = reclaimed_job["attempts"]
    now = reclaimed_job["now"]
    write_attempt(account, second)
    handle(stream_event("41"), service, now=now)
    partial = cost_item(account, "41")
    assert [a["state"] for a in partial["attempts"]] == ["COMPLETED"]

    write_attempt(account, first)
    handle(stream_event("41"), service, now=now)
    after_events = cost_item(account, "41")

    again = handle(stream_event("41", "41"), service, now=now + 5)
    rerun = handle({"action": "schedule"}, account.service(), now=now + 10)
    assert again["jobs_written"] == 0 and again["metrics_published"] == 0
    assert rerun["jobs_written"] == 0 and rerun["metrics_published"] == 0
    assert cost_item(account, "41") == after_events

    lost, kept = reclaimed_job["expected"]
    assert after_events["estimate_usd"] == pytest.approx(lost + kept, abs=1e-9)
    assert after_events["reclaimed_usd"] == pytest.approx(lost, abs=1e-9)


def test_metric_sum_matches_estimates_across_reprices(account, reclaimed_job):
    service = account.service()
    first, second = reclaimed_job["attempts"]
    write_attempt(account, second)
    handle(stream_event("41"), service, now=reclaimed_job["now"])
    write_attempt(account, first)
    handle(stream_event("41"), service, now=reclaimed_job["now"])
    statistics = account.clients.cloudwatch.get_metric_statistics(
        Namespace="RelionSpot",
        MetricName="JobCostUSD",
        Dimensions=[{"Name": "Cluster", "Value": CLUSTER}],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(hours=1),
        Period=7200,
        Statistics=["Sum", "SampleCount"],
    )["Datapoints"]
    assert len(statistics) == 1 and statistics[0]["SampleCount"] == 2
    assert statistics[0]["Sum"] == pytest.approx(cost_item(account, "41")["estimate_usd"])


def test_vanished_instance_priced_from_record_and_flagged(account, reclaimed_job):
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    gone = reclaimed_job["instances"][0]
    account.ec2.terminate_instances(InstanceIds=[gone])
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    # EC2 forgets terminated instances (and their tags) after about an hour; moto keeps them,
    # so drop it from moto's books here.
    for reservation_id, reservation in list(backend.reservations.items()):
        if any(i.id == gone for i in reservation.instances):
            del backend.reservations[reservation_id]
    backend.tags.pop(gone, None)
    assert not account.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [gone]}])[
        "Tags"
    ]
    with pytest.raises(account.ec2.exceptions.ClientError):
        account.ec2.describe_instances(InstanceIds=[gone])

    handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
    item = cost_item(account, "41")
    lost, kept = reclaimed_job["expected"]
    assert item["estimate_usd"] == pytest.approx(lost + kept, abs=1e-9)
    assert item["flags"] == [f"priced-from-record:{gone}", "storage-io-unmetered"]


def test_malformed_events_are_logged_and_skipped(account, reclaimed_job, caplog):
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    good = stream_event("41")["Records"][0]
    event = {
        "Records": [
            "not a record",
            {"eventSource": "aws:sqs", "body": "{}"},
            {"eventSource": "aws:dynamodb", "dynamodb": {"Keys": {}}},
            {"eventSource": "aws:dynamodb", "dynamodb": {"Keys": {JOB_KEY: {"S": "no-hash"}}}},
            good,
        ]
    }
    with caplog.at_level(logging.ERROR, logger="relion_spot.cost.handler"):
        outcome = handle(event, account.service(), now=reclaimed_job["now"])
    assert outcome["skipped"] == 4
    assert outcome["jobs_written"] == 1
    assert sum("malformed stream record" in r.getMessage() for r in caplog.records) == 4

    assert handle({"action": "bogus"}, account.service())["skipped"] == 1
    named = {
        "action": "price-jobs",
        "jobs": [{"cluster": CLUSTER}, 7, {"cluster": CLUSTER, "job_id": "41"}],
    }
    outcome = handle(named, account.service(), now=reclaimed_job["now"])
    assert outcome["skipped"] == 2 and outcome["jobs_priced"] == 1


def test_malformed_stored_record_is_skipped_in_a_window(account, reclaimed_job, caplog):
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    end = reclaimed_job["now"] - 100
    broken = {
        JOB_KEY: job_key(CLUSTER, "99"),
        ATTEMPT_KEY: "0000000001",
        "cluster": CLUSTER,
        "end": end,
        RECORD: json.dumps(
            {
                "cluster": CLUSTER,
                "job_id": "99",
                "start": "yesterday",
                "end": end,
                "state": "COMPLETED",
            }
        ),
    }
    unreadable = {**broken, ATTEMPT_KEY: "0000000002", RECORD: "{not json"}
    account.dynamodb.put_item(TableName=RECORDS, Item=serialize(unreadable))
    account.dynamodb.put_item(TableName=RECORDS, Item=serialize(broken))
    index = bucket_key(CLUSTER, hour_of(end), shard_of("99"))
    account.dynamodb.update_item(
        TableName=RECORDS,
        Key={JOB_KEY: {"S": index}, ATTEMPT_KEY: {"S": BUCKET_SORT_KEY}},
        UpdateExpression="ADD #records :records",
        ExpressionAttributeNames={"#records": BUCKET_RECORDS},
        ExpressionAttributeValues={":records": {"SS": [broken[RECORD], unreadable[RECORD]]}},
    )
    with caplog.at_level(logging.ERROR, logger="relion_spot.cost.handler"):
        outcome = handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
    assert outcome["skipped"] == 2 and outcome["jobs_written"] == 1
    assert any("'yesterday'" in r.getMessage() for r in caplog.records)
    assert any("not JSON" in r.getMessage() for r in caplog.records)


def test_cost_explorer_billed_cost_stored_beside_estimate(account, reclaimed_job):
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    now = reclaimed_job["now"]
    handle({"action": "schedule"}, account.service(), now=now)
    day = datetime.fromtimestamp(now, UTC).date() - timedelta(days=1)
    result = {
        "ResultsByTime": [
            {
                "TimePeriod": {"Start": day.isoformat(), "End": (day + timedelta(1)).isoformat()},
                "Total": {},
                "Groups": [
                    {
                        "Keys": [f"{tags.CLUSTER}${CLUSTER}", f"{tags.JOB_ID}$41"],
                        "Metrics": {"UnblendedCost": {"Amount": "0.0123", "Unit": "USD"}},
                    },
                    {
                        "Keys": [f"{tags.CLUSTER}${CLUSTER}", f"{tags.JOB_ID}$"],
                        "Metrics": {"UnblendedCost": {"Amount": "5.0", "Unit": "USD"}},
                    },
                ],
                "Estimated": True,
            }
        ],
        "DimensionValueAttributes": [],
    }
    response = requests.post(
        "http://motoapi.amazonaws.com/moto-api/static/ce/cost-and-usage-results",
        json={"results": [result]},
        timeout=5,
    )
    assert response.status_code == 201

    outcome = handle({"action": "reconcile"}, account.service(), now=now)
    assert outcome == {**outcome, "billed_jobs": 1, "billed_updated": 1}
    item = cost_item(account, "41")
    assert item["billed_usd"] == pytest.approx(0.0123)
    assert item["billed_by_day"] == {day.isoformat(): pytest.approx(0.0123)}
    lost, kept = reclaimed_job["expected"]
    assert item["estimate_usd"] == pytest.approx(lost + kept, abs=1e-9)

    assert handle({"action": "reconcile"}, account.service(), now=now)["billed_updated"] == 0
    # A later re-pricing (a third attempt turned up) keeps the billed figure beside it.
    account.launch(node="gpu-5", instance_type="g5.xlarge", zone="us-east-1a")
    late = slurm_env("41", nodes="gpu-5", start=now + 10, end=now + 610, state="COMPLETED", procs=4)
    write_attempt(account, late)
    assert handle({"action": "schedule"}, account.service(), now=now + 700)["jobs_written"] == 1
    repriced = cost_item(account, "41")
    assert len(repriced["attempts"]) == 3
    assert repriced["estimate_usd"] > item["estimate_usd"]
    assert repriced["billed_usd"] == item["billed_usd"]
    assert repriced["billed_by_day"] == item["billed_by_day"]


def test_node_unmapped_at_write_time_is_resolved_when_pricing(account):
    late = account.launch(node="placeholder", instance_type="g5.xlarge", zone="us-east-1a")
    account.ec2.delete_tags(Resources=[late], Tags=[{"Key": tags.NODE}])
    started = int(
        account.ec2.describe_instances(InstanceIds=[late])["Reservations"][0]["Instances"][0][
            "LaunchTime"
        ].timestamp()
    )
    env = slurm_env(
        "77", nodes="gpu-7", start=started + 30, end=started + 3630, state="COMPLETED", procs=4
    )
    assert write_attempt(account, env) == "written"
    handle(
        {"action": "price-jobs", "jobs": [{"cluster": CLUSTER, "job_id": "77"}]},
        account.service(),
        now=started + 4000,
    )
    assert cost_item(account, "77")["flags"] == ["storage-io-unmetered", "unresolved-node:gpu-7"]

    account.ec2.create_tags(Resources=[late], Tags=[{"Key": tags.NODE, "Value": "gpu-7"}])
    outcome = handle({"action": "schedule"}, account.service(), now=started + 4000)
    assert outcome["jobs_written"] == 1
    item = cost_item(account, "77")
    assert item["flags"] == ["storage-io-unmetered"]
    assert item["attempts"][0]["nodes"][0]["instance_id"] == late
    assert item["estimate_usd"] > 0
