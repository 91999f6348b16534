"""The stack-delete sweep, with the real boto3 code against moto."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import boto3
import pytest

from relion_spot import tags
from relion_spot.teardown import handler
from relion_spot.teardown.sweep import TeardownIncomplete, terminate_cluster_instances
from tests.fakes import FakeClock


def _launch(ec2, cluster: str, count: int) -> list[str]:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = ec2.run_instances(
        ImageId=image,
        InstanceType="g5.xlarge",
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": tags.CLUSTER, "Value": cluster}]}
        ],
    )
    return [i["InstanceId"] for i in reservation["Instances"]]


def _states(ec2, ids: list[str]) -> dict[str, str]:
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}


@pytest.fixture
def ec2(moto_aws):
    return boto3.client("ec2", region_name="us-east-1")


def test_terminates_this_clusters_instances_and_leaves_others(ec2) -> None:
    mine = _launch(ec2, "lab-gpu1", 3)
    theirs = _launch(ec2, "lab-gpu4", 2)
    clock = FakeClock()
    result = terminate_cluster_instances(
        ec2, "lab-gpu1", seconds_allowed=60, clock=clock, sleep=clock.sleep
    )
    assert sorted(result.terminated) == sorted(mine)
    assert set(_states(ec2, mine).values()) == {"terminated"}
    assert set(_states(ec2, theirs).values()) == {"running"}


def test_retry_after_a_complete_sweep_is_a_no_op(ec2) -> None:
    _launch(ec2, "lab-gpu1", 2)
    clock = FakeClock()
    terminate_cluster_instances(ec2, "lab-gpu1", seconds_allowed=60, clock=clock, sleep=clock.sleep)
    again = terminate_cluster_instances(
        ec2, "lab-gpu1", seconds_allowed=60, clock=clock, sleep=clock.sleep
    )
    assert again.terminated == []


def test_fails_clearly_when_an_instance_cannot_be_terminated_in_time(ec2) -> None:
    free = _launch(ec2, "lab-gpu1", 2)
    protected = _launch(ec2, "lab-gpu1", 1)[0]
    ec2.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": True})
    clock = FakeClock()
    with pytest.raises(TeardownIncomplete) as caught:
        terminate_cluster_instances(
            ec2, "lab-gpu1", seconds_allowed=30, poll_seconds=5, clock=clock, sleep=clock.sleep
        )
    message = str(caught.value)
    assert protected in message and "OperationNotPermitted" in message
    assert "lab-gpu1" in message and "retry the stack delete" in message
    assert set(_states(ec2, free).values()) == {"terminated"}, "the others still go"
    assert 25 <= clock.now <= 30


class _Recorder(BaseHTTPRequestHandler):
    replies: list[dict] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.replies.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def response_url():
    """A loopback stand-in for CloudFormation's pre-signed response URL."""
    _Recorder.replies = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/reply", _Recorder.replies
    server.shutdown()


class LambdaContext:
    log_stream_name = "2026/11/23/[$LATEST]test"

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def _event(request_type: str, url: str, cluster: str = "lab-gpu1") -> dict:
    return {
        "RequestType": request_type,
        "ResponseURL": url,
        "StackId": "stack",
        "RequestId": "req",
        "LogicalResourceId": "TeardownSweep",
        "PhysicalResourceId": f"teardown-{cluster}",
        "ResourceProperties": {"ServiceToken": "arn", "ClusterName": cluster},
    }


def test_handler_sweeps_on_delete_and_replies_success(ec2, response_url) -> None:
    url, replies = response_url
    mine = _launch(ec2, "lab-gpu1", 2)
    handler.on_event(_event("Delete", url), LambdaContext(remaining_ms=900_000))
    assert replies[-1]["Status"] == "SUCCESS"
    assert sorted(replies[-1]["Data"]["Terminated"].split(",")) == sorted(mine)
    assert set(_states(ec2, mine).values()) == {"terminated"}


def test_handler_does_nothing_on_create_or_update(ec2, response_url) -> None:
    url, replies = response_url
    mine = _launch(ec2, "lab-gpu1", 1)
    for request_type in ("Create", "Update"):
        handler.on_event(_event(request_type, url), LambdaContext(remaining_ms=900_000))
        assert replies[-1]["Status"] == "SUCCESS"
    assert set(_states(ec2, mine).values()) == {"running"}


def test_handler_replies_failed_with_the_reason_before_its_time_runs_out(ec2, response_url) -> None:
    url, replies = response_url
    protected = _launch(ec2, "lab-gpu1", 1)[0]
    ec2.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": True})
    margin_ms = int(handler.REPLY_MARGIN_SECONDS * 1000)
    handler.on_event(_event("Delete", url), LambdaContext(remaining_ms=margin_ms + 1000))
    assert replies[-1]["Status"] == "FAILED"
    assert protected in replies[-1]["Reason"]


def test_handler_refuses_an_event_without_cluster_name(ec2, response_url) -> None:
    url, replies = response_url
    event = _event("Delete", url)
    del event["ResourceProperties"]["ClusterName"]
    handler.on_event(event, LambdaContext(remaining_ms=900_000))
    assert replies[-1]["Status"] == "FAILED"
    assert "ClusterName is missing" in replies[-1]["Reason"]
