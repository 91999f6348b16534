"""A spot reclaim end to end on the embedded cloud: the notice reaches the node's own spot watcher
through the metadata service, the watcher drains the node and requeues its job, the real suspend
program terminates the instance, and the job runs again to completion on a freshly launched node.
The event lands in the spot-event table for the cost tracker."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relion_spot import tags
from relion_spot.cost.store import deserialize
from relion_spot.local.embedded import SPOT_EVENTS_TABLE, EmbeddedCloud
from relion_spot.settings import Settings
from relion_spot.slurm.local import wait_until
from tests.slurm.show import scontrol_fields
from tests.slurm.test_containers import job, sbatch

pytestmark = pytest.mark.docker

GRACE_SECONDS = 90
"""Time the node is given after the notice (AWS gives 120 s); the watcher must requeue within it
even on a busy machine, or the instance's end would requeue the job without a spot reason."""


@pytest.fixture
def cloud(slurm_images: None, tmp_path: Path) -> Iterator[EmbeddedCloud]:
    with EmbeddedCloud.start(
        prefix=f"relion-spot-test-reclaim-{os.getpid()}",
        settings=Settings(gpus=(1,)),
        gpu_count=1,
        work_dir=tmp_path,
        suspend_time=60,
    ) as cloud:
        yield cloud


def _node_tag(instance: dict) -> str:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or []}.get(tags.NODE, "")


def test_a_reclaimed_job_is_requeued_and_finishes_on_a_fresh_node(
    cloud: EmbeddedCloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relion_spot.local")
    local = cloud.local
    marker = "/data/attempts.log"
    job_id = sbatch(
        local,
        [
            "-p", "gpu", "--gres=gpu:1", "--requeue", "-o", "/dev/null",
            # The first attempt outlasts any watcher's round trip; the second ends soon.
            "--wrap", f"echo ${{SLURM_RESTART_COUNT:-0}} $(hostname) >> {marker}; "
            f'[ "${{SLURM_RESTART_COUNT:-0}}" != 0 ] || sleep 600; sleep 5',
        ],
    )  # fmt: skip
    wait_until(
        lambda: job(local, job_id).get("JobState") == "RUNNING",
        timeout=120,
        what=lambda: f"job {job_id} to run ({job(local, job_id)})\n{local.logs(tail=40)}",
    )
    (first,) = [i for i in cloud.instances() if i["State"]["Name"] == "running"]
    first_node = job(local, job_id)["NodeList"]
    assert _node_tag(first) == first_node
    attempts_log = Path(local.data_dir or "") / "attempts.log"
    # RUNNING in Slurm comes before the batch script's first line on a busy machine; the notice
    # must land on a job that has begun, or its first attempt leaves nothing to check.
    wait_until(
        lambda: (
            attempts_log.is_file() and attempts_log.read_text().split()[:2] == ["0", first_node]
        ),
        timeout=60,
        what=lambda: f"job {job_id}'s first attempt to start on {first_node}",
    )

    noticed = time.monotonic()
    cloud.reconciler.reclaim(first["InstanceId"], grace_seconds=GRACE_SECONDS)

    def requeued() -> bool:
        return job(local, job_id).get("Restarts") == "1"

    wait_until(
        requeued,
        timeout=GRACE_SECONDS,
        what=lambda: (
            f"the watcher to requeue job {job_id} ({job(local, job_id)})\n"
            + local.logs(local.node_container(first_node), tail=30)
        ),
    )
    handed_back = time.monotonic() - noticed
    node = scontrol_fields(local.run("scontrol", "show", "node", first_node))
    assert "DRAIN" in node["State"] or "POWER" in node["State"], node["State"]
    assert node.get("Reason", "").startswith("spot"), node

    wait_until(
        lambda: job(local, job_id).get("JobState") in ("RUNNING", "COMPLETED"),
        timeout=180,
        what=lambda: f"job {job_id} to run again ({job(local, job_id)})",
    )
    running_again = time.monotonic() - noticed
    wait_until(
        lambda: job(local, job_id).get("JobState") == "COMPLETED",
        timeout=120,
        what=lambda: f"job {job_id} to finish after the reclaim ({job(local, job_id)})",
    )
    finished = job(local, job_id)
    assert finished["Restarts"] == "1"

    launched = cloud.instances()
    assert len(launched) == 2, [(i["InstanceId"], i["State"]["Name"]) for i in launched]
    assert launched[0]["InstanceId"] == first["InstanceId"]
    assert launched[0]["State"]["Name"] in ("shutting-down", "terminated")
    assert launched[1]["InstanceLifecycle"] == "spot"
    assert _node_tag(launched[1]) == finished["NodeList"]

    attempts = attempts_log.read_text().split()
    assert attempts[0::2] == ["0", "1"], attempts

    def events() -> list[dict]:
        items = cloud.client("dynamodb").scan(TableName=SPOT_EVENTS_TABLE)["Items"]
        return [deserialize(item) for item in items]

    (event,) = wait_until(
        events,
        timeout=GRACE_SECONDS,
        what=lambda: (
            "the watcher's event in the spot-event table\n"
            + local.logs(local.node_container(first_node), tail=30)
        ),
    )
    assert event["instance_id"] == first["InstanceId"]
    assert event["node"] == first_node
    assert event["job_ids"] == [str(job_id)]
    assert event["requeued"] is True
    print(
        f"\nnotice -> job handed back to Slurm: {handed_back:.1f} s; "
        f"-> running again on {finished['NodeList']}: {running_again:.1f} s"
    )
