"""A finished job leaves its cost record: real slurmctld runs the real jobcomp program, which
writes to DynamoDB (moto's server standing in for AWS)."""

from __future__ import annotations

import boto3

from relion_spot.cost.store import (
    JOB_KEY,
    attempt_from_item,
    create_tables,
    deserialize,
    is_bucket_key,
)
from relion_spot.slurm.key import KEY_PARAMETER_ARN_ENV
from relion_spot.slurm.local import LocalSlurm, wait_until

from .test_containers import (
    key_parameter,
    node_state,
    sbatch,
    wait_for_controller,
    wait_job_state,
)

RECORDS = "job-records"


def test_each_finished_job_is_recorded_once(moto_on_network: tuple[LocalSlurm, str]) -> None:
    local, endpoint = moto_on_network
    region = "us-east-1"
    dynamodb = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint)
    create_tables(dynamodb, records_table=RECORDS, costs_table="job-costs")
    arn = key_parameter(endpoint, local.spec.cluster_name, region)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        KEY_PARAMETER_ARN_ENV: arn,
        "RELION_SPOT_CLUSTER": local.spec.cluster_name,
        "RELION_SPOT_RECORDS_TABLE": RECORDS,
    }
    local.start_controller(env=env)
    wait_for_controller(local)
    local.start_node("gpu-1", placeholder_gpus=1, env=env)
    wait_until(lambda: node_state(local, "gpu-1") == "IDLE", timeout=60, what="gpu-1 to register")
    job_id = sbatch(local, ["-o", "/dev/null", "-J", "recorded", "--wrap", "sleep 1"])
    wait_job_state(local, job_id, "COMPLETED")

    def records() -> list:
        items = [deserialize(i) for i in dynamodb.scan(TableName=RECORDS)["Items"]]
        return [attempt_from_item(i) for i in items if not is_bucket_key(i[JOB_KEY])]

    wait_until(
        lambda: bool(records()),
        timeout=60,
        what=lambda: f"a job record; controller log:\n{local.logs()}",
    )
    (attempt,) = records()
    assert attempt.job_id == str(job_id)
    assert attempt.state == "COMPLETED"
    assert attempt.job_name == "recorded"
    assert attempt.partition == "gpu"
    assert [use.node for use in attempt.nodes] == ["gpu-1"]
    assert attempt.end >= attempt.start > 0
