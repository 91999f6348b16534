"""Scale-to-zero on the embedded cloud: an idle controller sets its own ECS service (in moto) to 0
and the reconciler stops its container as Fargate would; a submission queued with no wake at all
is found by the scheduled wake check (its Lambda handler, run as its schedule would), which wakes
the service; the controller comes back on its saved state, and the queued job runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relion_spot.controller_wake import handler as wake_check
from relion_spot.demo.runner import DemoSettings, job_parameters, make_dataset
from relion_spot.intake.client import submit, wait_for_acceptance
from relion_spot.intake.table import IntakeTable
from relion_spot.local.embedded import INTAKE_TABLE, EmbeddedCloud
from relion_spot.relion.synthetic import load_manifest
from relion_spot.settings import Settings
from relion_spot.slurm import idle
from relion_spot.slurm.local import wait_until
from tests.slurm.test_containers import job, sbatch

pytestmark = pytest.mark.docker

IDLE_SECONDS = 15


@pytest.fixture
def cloud(slurm_images: None, tmp_path: Path) -> Iterator[EmbeddedCloud]:
    with EmbeddedCloud.start(
        prefix=f"relion-spot-test-sleep-{os.getpid()}",
        settings=Settings(gpus=(1,)),
        gpu_count=1,
        work_dir=tmp_path,
        suspend_time=20,
        controller_idle_seconds=IDLE_SECONDS,
    ) as cloud:
        yield cloud


def _desired(cloud: EmbeddedCloud) -> int:
    found = cloud.client("ecs").describe_services(
        cluster=cloud.env[idle.CLUSTER_ENV], services=[cloud.env[idle.SERVICE_ENV]]
    )["services"]
    return int(found[0]["desiredCount"])


def test_idle_controller_sleeps_and_the_wake_check_wakes_it_for_a_queued_submission(
    cloud: EmbeddedCloud,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="relion_spot.local")
    local = cloud.local
    # A job before the sleep, held so it launches no node, then cancelled: the counter is at 1.
    before = sbatch(
        local, ["--hold", "-p", "gpu", "--gres=gpu:1", "-o", "/dev/null", "--wrap", "true"]
    )
    local.run("scancel", str(before))
    wait_until(
        lambda: _desired(cloud) == 0 and not local.is_running(),
        timeout=IDLE_SECONDS + 90,
        what=lambda: f"the idle controller to stop itself\n{local.logs(tail=30)}",
    )
    assert "service relion-spot-gpu1-controller scaled to 0" in local.logs(tail=100_000)

    settings = DemoSettings(iterations=1, reclaim_after=0, particles_per_class=20)
    project = make_dataset(settings, tmp_path / "data")
    table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
    submission = submit(
        cloud.client("sqs"),
        table,
        cloud.env["RELION_SPOT_INTAKE_QUEUE_URL"],
        parameters=job_parameters(settings, load_manifest(project)),
        user="lab",
    )
    assert _desired(cloud) == 0, "queued, and nothing woke the controller yet"
    monkeypatch.setenv(wake_check.QUEUE_URL_ENV, cloud.env["RELION_SPOT_INTAKE_QUEUE_URL"])
    monkeypatch.setenv(wake_check.CLUSTER_ENV, cloud.env[idle.CLUSTER_ENV])
    monkeypatch.setenv(wake_check.SERVICE_ENV, cloud.env[idle.SERVICE_ENV])
    checked = wake_check.on_schedule({}, sqs=cloud.client("sqs"), ecs=cloud.client("ecs"))
    assert checked == {"outcome": wake_check.WOKEN, "waiting": 1}
    job_id = wait_for_acceptance(table, submission.submission_id, timeout=180)
    assert local.is_running()
    assert int(job_id) == before + 1, "the job counter survived the sleep"
    wait_until(
        lambda: job(local, int(job_id)).get("JobState") == "COMPLETED",
        timeout=300,
        what=lambda: f"job {job_id} to finish after the wake ({job(local, int(job_id))})",
    )
    decisions = [r.getMessage() for r in caplog.records]
    assert any("stopping the controller" in d for d in decisions), decisions
    assert any("starting the controller" in d for d in decisions), decisions
