"""The embedded cloud's metadata service read by the node's own IMDSv2 client and spot watcher:
tokens are required, each instance sees its own identity and tags, and the spot notice appears
only once the instance is reclaimed."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot import tags
from relion_spot.intake.report import instance_arn
from relion_spot.local.imds import LocalImds
from relion_spot.node import spot_watcher
from relion_spot.node.imds import Imds, ImdsError

REGION = "us-east-1"


def _instance(ec2: Any, node: str) -> str:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (instance,) = ec2.run_instances(
        ImageId=image,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": tags.NODE, "Value": node}, {"Key": tags.CLUSTER, "Value": "c1"}],
            }
        ],
    )["Instances"]
    return str(instance["InstanceId"])


@pytest.fixture
def served() -> Any:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        notices: dict[str, dict[str, str]] = {}
        with LocalImds(ec2, notices=notices.get) as imds:
            yield ec2, notices, imds


def test_each_instance_reads_its_own_identity_and_tags(served: Any) -> None:
    ec2, _, imds = served
    first, second = _instance(ec2, "gpu-1"), _instance(ec2, "gpu-2")
    client = Imds(imds.url_for(second))
    assert client.get("instance-id") == second
    assert client.get("instance-type") == "g5.xlarge"
    assert client.get("placement/region") == REGION
    assert client.get(f"tags/instance/{tags.NODE}") == "gpu-2"
    assert client.get("tags/instance/absent") is None
    assert Imds(imds.url_for(first)).get(f"tags/instance/{tags.NODE}") == "gpu-1"
    # The ARN the node's report items are keyed by, as AWS's ec2:SourceInstanceARN names it.
    assert instance_arn(client) == f"arn:aws:ec2:{REGION}:123456789012:instance/{second}"

    settings = spot_watcher.WatcherSettings.from_env({"RELION_SPOT_IMDS_URL": imds.url_for(first)})
    identity = spot_watcher.wait_for_identity(client, settings, {}, sleep=lambda _: None)
    assert (identity.node, identity.cluster) == ("gpu-2", "c1")
    assert identity.availability_zone.startswith(REGION)


def test_a_get_without_a_token_is_refused(served: Any) -> None:
    import urllib.error
    import urllib.request

    ec2, _, imds = served
    url = f"{imds.url_for(_instance(ec2, 'gpu-1'))}/latest/meta-data/instance-id"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5)
    assert refused.value.code == 401
    with pytest.raises(ImdsError, match="no answer"):
        Imds(f"http://127.0.0.1:{_closed_port()}/i-0").get("instance-id")


def test_the_notice_appears_only_after_a_reclaim(served: Any) -> None:
    ec2, notices, imds = served
    instance = _instance(ec2, "gpu-1")
    client = Imds(imds.url_for(instance))
    assert client.get(spot_watcher.ACTION_PATH) is None
    notices[instance] = {"action": "terminate", "time": "2026-11-24T10:00:00Z"}
    assert json.loads(client.get(spot_watcher.ACTION_PATH) or "") == notices[instance]
    notice = spot_watcher.wait_for_notice(client, 1, sleep=lambda _: None)
    assert notice == {"action": "terminate", "time": "2026-11-24T10:00:00Z"}


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
