"""Scaling end to end on the embedded cloud: a job on an empty cluster makes slurmctld run the real
resume program, which launches a spot fleet in moto; the reconciler boots the instance as a node
container, the job runs on it; once the node has idled for SuspendTime the real suspend program
terminates the instance and the reconciler removes the container."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import boto3
import pytest

from relion_spot import tags
from relion_spot.local.cloud import prepare_cloud
from relion_spot.local.reconciler import Reconciler
from relion_spot.slurm.key import KEY_PARAMETER_ARN_ENV
from relion_spot.slurm.local import LocalSlurm, docker, wait_until
from tests.slurm.show import scontrol_fields
from tests.slurm.test_containers import job, key_parameter, sbatch, wait_for_controller

pytestmark = pytest.mark.docker

REGION = "us-east-1"
SUSPEND_SECONDS = 20
"""SuspendTime for this test only (Settings allow 60 s at least; the spec takes any)."""
POWERSAVE_LOG = "/var/log/slurm/relion-spot-powersave.log"


def _instances(ec2: Any, cluster: str) -> list[dict]:
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]}]
    )
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _diagnostics(local: LocalSlurm) -> str:
    powersave = docker("exec", local.controller, "cat", POWERSAVE_LOG, check=False)
    node = local.logs(local.node_container("gpu-1"), tail=40)
    return (
        f"\n--- controller:\n{local.logs(tail=60)}\n--- power-save programs:\n"
        f"{powersave.stdout}{powersave.stderr}\n--- gpu-1:\n{node}"
    )


def test_a_job_launches_a_spot_node_and_idling_terminates_it(
    moto_on_network: tuple[LocalSlurm, str], caplog: pytest.LogCaptureFixture
) -> None:
    network_local, endpoint = moto_on_network
    spec = dataclasses.replace(network_local.spec, suspend_time=SUSPEND_SECONDS)
    local = dataclasses.replace(network_local, spec=spec, nodes={})
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    arn = key_parameter(endpoint, spec.cluster_name, REGION)
    env = {**prepare_cloud(ec2, spec), KEY_PARAMETER_ARN_ENV: arn}

    local.start_controller(env=env)
    wait_for_controller(local)
    node = scontrol_fields(local.run("scontrol", "show", "node", "gpu-1"))
    assert "POWERED_DOWN" in node["State"], node["State"]
    assert _instances(ec2, spec.cluster_name) == []

    caplog.set_level(logging.INFO, logger="relion_spot.local.reconciler")
    with Reconciler(local, ec2, node_env=env) as reconciler:
        submitted = time.monotonic()
        job_id = sbatch(
            local, ["-p", "gpu", "--gres=gpu:1", "-o", "/dev/null", "--wrap", "sleep 3"]
        )
        wait_until(
            lambda: job(local, job_id).get("JobState") in ("RUNNING", "COMPLETED"),
            timeout=90,
            interval=0.2,
            what=lambda: f"job {job_id} to run ({job(local, job_id)}){_diagnostics(local)}",
        )
        running = time.monotonic() - submitted
        booted = reconciler.machines["gpu-1"].started - submitted
        # Measured here: the node registers a few seconds after its container starts; the job
        # stays CONFIGURING until a periodic check in slurmctld finds its node ready (22 s later).
        print(
            f"\nsubmit -> running: {running:.1f} s "
            f"(submit -> container started: {booted:.1f} s: resume, CreateFleet, tagging, a poll)"
        )

        (instance,) = _instances(ec2, spec.cluster_name)
        instance_tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        assert instance_tags[tags.NODE] == "gpu-1"
        assert instance_tags[tags.PARTITION] == "gpu"
        assert instance["InstanceType"] in spec.partitions[0].instance_types
        assert instance.get("InstanceLifecycle") == "spot"
        assert local.is_running(local.node_container("gpu-1"))
        assert job(local, job_id).get("NodeList") == "gpu-1"

        wait_until(
            lambda: job(local, job_id).get("JobState") == "COMPLETED",
            timeout=60,
            what=lambda: f"job {job_id} to complete ({job(local, job_id)})",
        )
        completed = time.monotonic()

        def terminated() -> bool:
            return _instances(ec2, spec.cluster_name)[0]["State"]["Name"] == "terminated"

        wait_until(
            terminated,
            timeout=SUSPEND_SECONDS + 60,
            interval=1,
            what=lambda: f"the idle node's instance to be terminated{_diagnostics(local)}",
        )
        idle_to_terminated = time.monotonic() - completed
        wait_until(
            lambda: (
                docker(
                    "container", "inspect", local.node_container("gpu-1"), check=False
                ).returncode
                != 0
            ),
            timeout=60,
            what="the reconciler to remove gpu-1's container",
        )
        print(f"job done -> instance terminated: {idle_to_terminated:.1f} s")

    decisions = [r.getMessage() for r in caplog.records if r.name.endswith("reconciler")]
    assert len([d for d in decisions if "starting its container" in d]) == 1, decisions
    assert len([d for d in decisions if "removing container" in d]) == 1, decisions
    node = scontrol_fields(local.run("scontrol", "show", "node", "gpu-1"))
    assert "POWER" in node["State"], node["State"]
