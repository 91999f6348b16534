"""The drainer as the controller runs it (``python -m relion_spot.intake.drain --once``, a real
process against moto's server on loopback), killed with SIGKILL right after sbatch created the
job and before anything was recorded or deleted: the next drain submits nothing new and records
the same job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from relion_spot.intake.client import submit, wait_for_acceptance
from relion_spot.intake.config import QUEUE_URL_ENV, SBATCH_ENV, SQUEUE_ENV, TABLE_ENV
from relion_spot.intake.table import IntakeTable
from relion_spot.jobs.class3d import DEFAULT_IMAGE
from relion_spot.jobs.image import sif_name
from relion_spot.slurm.spec import SPEC_ENV

from .conftest import TABLE, FakeSlurm, cluster_spec, make_queue_and_table

REPO_ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_SECONDS = 2


def _drain_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relion_spot.intake.drain", "--once", "--wait-seconds", "5"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_drainer_killed_after_sbatch_leaves_a_retry_that_submits_nothing_new(
    moto_server: str, fake_slurm: FakeSlurm
) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    queue_url = make_queue_and_table(sqs, dynamodb, visibility=VISIBILITY_SECONDS)
    table = IntakeTable(dynamodb, TABLE)
    sent = submit(sqs, table, queue_url, parameters={"preset": "benchmark", "K": 6}, user="alice")

    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_DEFAULT_REGION": "us-east-1",
        QUEUE_URL_ENV: queue_url,
        TABLE_ENV: TABLE,
        SPEC_ENV: cluster_spec().to_json(),
        SBATCH_ENV: str(fake_slurm.sbatch),
        SQUEUE_ENV: str(fake_slurm.squeue),
    }
    fake_slurm.set("kill-parent")
    killed = _drain_once(env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert fake_slurm.jobs() == [
        "7|(null)",
        f"42|relion-spot-image:{sif_name(DEFAULT_IMAGE)}",
        f"43|relion-spot:{sent.submission_id}",
    ]
    claim = table.get(sent.submission_id)
    assert claim is not None and claim.state == "submitting", "killed before any decision"

    time.sleep(VISIBILITY_SECONDS + 0.5)
    retried = _drain_once(env)
    assert retried.returncode == 0, retried.stderr
    assert len(fake_slurm.sbatch_calls()) == 2, "the retry ran no sbatch"
    assert wait_for_acceptance(table, sent.submission_id, timeout=5) == "43"
    record = table.get(sent.submission_id)
    assert record is not None and record.claimed_at == claim.claimed_at
    decisions = [line for line in retried.stderr.splitlines() if sent.submission_id in line]
    assert decisions == [
        f"relion-spot intake: {sent.submission_id}: recorded existing Slurm job 43 for alice "
        f"({record.message})"
    ]
    assert "Traceback" not in retried.stderr

    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
