"""An idle node whose controller is gone ends itself on the embedded cloud: the controller
container stops (its ECS service set to 0, as when Fargate has no capacity left for it), the
node's own spot watcher finds slurmctld silent and no job step for the set time, terminates its
instance in moto, and the reconciler takes the machine away. Nothing bills unseen."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relion_spot import tags
from relion_spot.local.embedded import EmbeddedCloud
from relion_spot.settings import Settings
from relion_spot.slurm.local import wait_until
from tests.slurm.test_containers import job, sbatch

pytestmark = pytest.mark.docker

ORPHAN_SECONDS = 20


@pytest.fixture
def cloud(slurm_images: None, tmp_path: Path) -> Iterator[EmbeddedCloud]:
    with EmbeddedCloud.start(
        prefix=f"relion-spot-test-orphan-{os.getpid()}",
        settings=Settings(gpus=(1,)),
        gpu_count=1,
        work_dir=tmp_path,
        suspend_time=3600,  # Slurm would not power it down within this test
        node_orphan_seconds=ORPHAN_SECONDS,
    ) as cloud:
        yield cloud


def test_an_idle_node_whose_controller_is_gone_terminates_itself(cloud: EmbeddedCloud) -> None:
    local = cloud.local
    job_id = sbatch(local, ["-p", "gpu", "--gres=gpu:1", "-o", "/dev/null", "--wrap", "true"])
    wait_until(
        lambda: job(local, job_id).get("JobState") == "COMPLETED",
        timeout=180,
        what=lambda: f"job {job_id} to complete ({job(local, job_id)})\n{local.logs(tail=40)}",
    )
    (instance,) = [i for i in cloud.instances() if i["State"]["Name"] == "running"]
    instance_id = instance["InstanceId"]
    node = {t["Key"]: t["Value"] for t in instance["Tags"]}[tags.NODE]
    container = local.node_container(node)

    ecs = cloud.client("ecs")
    # slurmctld may fall silent anywhere in its container's stop: the time before the request is
    # the one bound the node's silence cannot precede.
    gone = time.monotonic()
    ecs.update_service(cluster=cloud.cluster, service=f"{cloud.cluster}-controller", desiredCount=0)
    wait_until(lambda: not local.is_running(), timeout=90, what="the controller to stop")

    def state() -> str:
        (found,) = [i for i in cloud.instances() if i["InstanceId"] == instance_id]
        return str(found["State"]["Name"])

    wait_until(
        lambda: state() == "terminated",
        timeout=ORPHAN_SECONDS + 60,
        what=lambda: (
            f"{instance_id} to be terminated ({state()})\n" + local.logs(container, tail=30)
        ),
    )
    waited = time.monotonic() - gone
    assert waited >= ORPHAN_SECONDS - 1, f"ended after {waited:.0f} s, before the set time"
    wait_until(
        lambda: node not in cloud.reconciler.machines,
        timeout=30,
        what=f"the reconciler to take {node}'s container away",
    )
