"""The budget cap in real Slurm 24.11 and moto: a job whose launch would pass the cap is held
with the reason "budget" and nothing is launched; the lab is told once; the release loop's check
leaves it held while the cap is unchanged and releases it when the cap rises, and the next resume
launches its node.

The controller is the project's image; the resume program and the release check run here and
reach Slurm through ``docker exec`` as SlurmUser (as in tests/powersave/test_slurm_semantics.py),
with EC2, DynamoDB, SNS and SQS from moto in this process. The controller's own ResumeProgram
finds no EC2 settings and launches nothing, which leaves the node POWERING_UP for the program
under test, exactly as slurmctld would have called it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot import tags
from relion_spot.budget.config import BUDGET_ENV, BudgetConfig
from relion_spot.budget.forecast import HORIZON_SECONDS
from relion_spot.budget.guard import BudgetGuard
from relion_spot.budget.jobs import BUDGET_COMMENT_PREFIX, cluster_jobs, held_for_budget
from relion_spot.budget.release import step
from relion_spot.catalog import INSTANCE_TYPES
from relion_spot.cost.config import COSTS_TABLE
from relion_spot.cost.pricing import AttemptCost, JobCost
from relion_spot.cost.store import CostStore, create_tables
from relion_spot.local.cloud import prepare_cloud
from relion_spot.notify.publish import TOPIC_ENV
from relion_spot.powersave import resume
from relion_spot.powersave.config import LOG_FILE_ENV, STATE_DIR_ENV, PowerSaveConfig
from relion_spot.powersave.slurm import Slurm
from relion_spot.settings import Settings
from relion_spot.slurm.local import (
    LocalSlurm,
    sbatch,
    wait_until,
)
from relion_spot.slurm.spec import LOCAL_CLOUD, ClusterSpec, spec_from_settings
from tests.powersave.test_slurm_semantics import in_container
from tests.slurm.conftest import controller_only, slurm_images  # noqa: F401  (fixture)
from tests.slurm.show import scontrol_fields

pytestmark = pytest.mark.docker

SPENT_USD = 3.00
"""Already priced this month; one g5-group node-hour more (the group's dearest type, on-demand)
passes a $3.50 cap and fits under $10."""


@pytest.fixture(scope="module")
def cluster(
    slurm_images: None,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalSlurm]:
    spec = spec_from_settings(
        Settings(gpus=(1,)), 1, suspend_timeout=2, resume_timeout=120, **LOCAL_CLOUD
    )
    with controller_only(tmp_path_factory.mktemp("budget"), "budget", spec) as local:
        yield local


def _job(local: LocalSlurm, job_id: int) -> dict[str, str]:
    return scontrol_fields(local.run("scontrol", "show", "job", str(job_id)))


def _held(job: dict[str, str]) -> bool:
    """A hold is priority 0. The reason Slurm shows is not the test: while the requeued job's
    node is still cleaned up it reads ``Cleaning``, and only then ``JobHeldAdmin``."""
    return job["JobState"] == "PENDING" and job["Priority"] == "0"


def _node_state(local: LocalSlurm, name: str) -> list[str]:
    fields = scontrol_fields(local.run("scontrol", "show", "node", name))
    return fields.get("State", "").split("+")


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with mock_aws():
        region = "us-east-1"
        clients = {
            name: boto3.client(name, region_name=region)
            for name in ("ec2", "dynamodb", "sns", "sqs")
        }
        create_tables(clients["dynamodb"], records_table="records", costs_table="costs")
        topic = clients["sns"].create_topic(Name="notify")["TopicArn"]
        queue = clients["sqs"].create_queue(QueueName="inbox")["QueueUrl"]
        queue_arn = clients["sqs"].get_queue_attributes(
            QueueUrl=queue, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        clients["sns"].subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        yield {**clients, "topic": topic, "queue": queue, "state": tmp_path / "powersave"}


def _priced_job(cluster: str, usd: float) -> JobCost:
    now = int(time.time())
    attempt = AttemptCost(
        key=f"{now - 600:012d}",
        state="COMPLETED",
        start=now - 600,
        end=now - 60,
        reclaimed=False,
        compute_usd=usd,
        ebs_usd=0.0,
        nodes=(),
        flags=(),
    )
    return JobCost(cluster, "9000", "lab", "class3d", "gpu", now - 600, now - 60, (attempt,))


def _messages(aws: dict[str, Any]) -> list[dict[str, Any]]:
    """What the topic delivered since the last call (read, then deleted)."""
    received = aws["sqs"].receive_message(QueueUrl=aws["queue"], MaxNumberOfMessages=10)
    messages = received.get("Messages", [])
    for message in messages:
        aws["sqs"].delete_message(QueueUrl=aws["queue"], ReceiptHandle=message["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in messages]


def _env(spec: ClusterSpec, aws: dict[str, Any], cap: str) -> dict[str, str]:
    return {
        **prepare_cloud(aws["ec2"], spec),
        BUDGET_ENV: cap,
        COSTS_TABLE: "costs",
        TOPIC_ENV: aws["topic"],
        STATE_DIR_ENV: str(aws["state"]),
        LOG_FILE_ENV: "",
    }


def _resume(cluster: LocalSlurm, env: dict[str, str], aws: dict[str, Any], nodes: str) -> int:
    return resume.main(
        [nodes],
        environ=env,
        runner=in_container(cluster.controller, "slurm"),
        ec2_client=aws["ec2"],
        dynamodb_client=aws["dynamodb"],
        sns_client=aws["sns"],
        sleep=lambda _: None,
    )


def _guard(cluster: LocalSlurm, env: dict[str, str], aws: dict[str, Any]) -> BudgetGuard:
    config = PowerSaveConfig.from_env(env)
    return BudgetGuard(
        BudgetConfig.from_env(env),
        config.cluster,
        config.groups,
        aws["dynamodb"],
        in_container(cluster.controller, "slurm"),
    )


def _cluster_instances(aws: dict[str, Any], cluster_name: str) -> list[dict[str, Any]]:
    pages = aws["ec2"].describe_instances(
        Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [cluster_name]}]
    )
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def test_a_launch_past_the_cap_holds_the_job_and_a_raised_cap_releases_it(
    cluster: LocalSlurm, aws: dict[str, Any]
) -> None:
    spec = cluster.spec
    dearest = max(INSTANCE_TYPES[t].on_demand_usd_hour for t in spec.partitions[0].instance_types)
    assert SPENT_USD + dearest * HORIZON_SECONDS / 3600 > 3.50
    CostStore(aws["dynamodb"], "costs").write_estimates(
        [_priced_job(spec.cluster_name, SPENT_USD)], priced_at=time.time()
    )
    job_id = sbatch(cluster, ["-p", "gpu", "-w", "gpu-1", "--wrap", "sleep 300"])
    wait_until(
        lambda: "POWERING_UP" in _node_state(cluster, "gpu-1"), timeout=60, what="gpu-1 resuming"
    )
    env = _env(spec, aws, "3.50")

    assert _resume(cluster, env, aws, "gpu-1") == 0

    held = _job(cluster, job_id)
    assert _held(held), held
    comment = cluster.run("scontrol", "show", "job", str(job_id)).split("AdminComment=")[1]
    assert comment.startswith(BUDGET_COMMENT_PREFIX), comment
    assert _cluster_instances(aws, spec.cluster_name) == [], "nothing launched past the cap"
    messages = _messages(aws)
    assert len(messages) == 1, messages
    assert messages[0]["MessageAttributes"]["event"]["Value"] == "budget-reached"
    assert str(job_id) in messages[0]["Message"] and "$3.50" in messages[0]["Subject"]

    # The same cap: the release loop's check leaves the job held.
    assert step(_guard(cluster, env, aws)) == []
    assert _held(_job(cluster, job_id))

    raised = {**env, BUDGET_ENV: "10"}
    assert step(_guard(cluster, raised, aws)) == [str(job_id)]
    released = _job(cluster, job_id)
    assert released["JobState"] == "PENDING" and not _held(released), released
    assert not any(
        held_for_budget(j) for j in cluster_jobs(in_container(cluster.controller, "slurm"))
    )

    # Slurm schedules it again (its requeue begin time lifted), and this time the node launches.
    assert Slurm(runner=in_container(cluster.controller, "slurm")).start_now([str(job_id)])
    wait_until(
        lambda: "POWERING_UP" in _node_state(cluster, "gpu-1"),
        timeout=90,
        what=lambda: (
            f"gpu-1 resuming again: {_node_state(cluster, 'gpu-1')} {_job(cluster, job_id)}"
        ),
    )
    assert _resume(cluster, raised, aws, "gpu-1") == 0
    launched = _cluster_instances(aws, spec.cluster_name)
    assert len(launched) == 1
    node_tags = {t["Key"]: t["Value"] for t in launched[0]["Tags"]}
    assert node_tags[tags.NODE] == "gpu-1"
    assert _messages(aws) == []
    cluster.run("scancel", str(job_id))


def test_the_month_boundary_is_utc() -> None:
    from relion_spot.budget.ledger import month_of

    last_second = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp()
    assert (month_of(last_second), month_of(last_second + 1)) == ("2026-11", "2026-12")
