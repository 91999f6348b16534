"""Prolog/Epilog job labels: the real program against moto and a loopback IMDSv2."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from relion_spot import tags
from relion_spot.node import job_tags
from relion_spot.node.imds import IMDS_URL_ENV

from .conftest import FakeImds


@pytest.fixture
def node(imds: FakeImds, moto_aws: None) -> tuple[FakeImds, object, str]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (instance,) = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    imds.metadata["instance-id"] = instance["InstanceId"]
    return imds, ec2, instance["InstanceId"]


def _tags(ec2, instance_id: str) -> dict[str, str]:
    found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])
    return {t["Key"]: t["Value"] for t in found["Tags"]}


def _env(imds: FakeImds, job_id: str, name: str = "class3d K=6 (run #1)") -> dict[str, str]:
    return {
        IMDS_URL_ENV: imds.url,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_USER": "relion",
        "SLURM_JOB_NAME": name,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_prolog_labels_and_epilog_clears_the_instance(node) -> None:
    imds, ec2, instance_id = node
    assert job_tags.main(["start"], environ=_env(imds, "41"), ec2_client=ec2) == 0
    labels = _tags(ec2, instance_id)
    assert labels[tags.JOB_ID] == "41"
    assert labels[tags.JOB_USER] == "relion"
    assert labels[tags.JOB_NAME] == "class3d K=6 _run _1_", "unsafe characters replaced"
    assert job_tags.main(["end"], environ=_env(imds, "41"), ec2_client=ec2) == 0
    assert not set(tags.JOB_TAG_KEYS) & set(_tags(ec2, instance_id))


def test_a_late_epilog_leaves_the_next_jobs_labels(node) -> None:
    imds, ec2, instance_id = node
    job_tags.main(["start"], environ=_env(imds, "41"), ec2_client=ec2)
    job_tags.main(["start"], environ=_env(imds, "42"), ec2_client=ec2)
    job_tags.main(["end"], environ=_env(imds, "41"), ec2_client=ec2)
    assert _tags(ec2, instance_id)[tags.JOB_ID] == "42"


def test_trouble_never_fails_the_prolog(node, caplog) -> None:
    imds, ec2, _ = node
    unreachable_ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    assert job_tags.main(["start"], environ=_env(imds, "7"), ec2_client=unreachable_ec2) == 0
    assert "job tags not set" in caplog.text
    unreachable = {**_env(imds, "7"), IMDS_URL_ENV: "http://127.0.0.1:9"}
    assert job_tags.main(["start"], environ=unreachable, ec2_client=ec2) == 0
    assert "IMDS unreachable" in caplog.text


def test_wrong_usage_exits_2(caplog) -> None:
    assert job_tags.main(["begin"], environ={}) == 2
    assert "usage: job_tags start|end" in caplog.text
