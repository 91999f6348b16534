"""The node's S3 credential broker and the staging job's client of it, over a real Unix socket.

The peer is this test process, named by the kernel (SO_PEERCRED); which job slurmd says the pid
belongs to is the test's to set (the real ``scontrol pidinfo`` answers in the container tests,
tests/security); STS and S3 are moto's. Each refusal
reaches the staging job as one line naming why, and the staging run then fails without looking
for credentials anywhere else.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot.node.job_reports import NodeJob
from relion_spot.node.stage_credentials import (
    REUSE_MARGIN,
    Broker,
    Refused,
    listen,
    serve_one,
)
from relion_spot.staging.cli import MARKER
from relion_spot.staging.cli import main as staging_main
from relion_spot.staging.credentials import ask_broker, s3_client_from_broker
from relion_spot.staging.errors import StagingError
from tests.staging.conftest import benchmark_tar

__all__ = ["benchmark_tar"]

ROLE = "arn:aws:iam::123456789012:role/lab-StageReaderRole-abc"
NODE = "cpu-1"
JOB = "42"


class Node:
    """A broker serving on a socket in a thread; ``jobs`` (what squeue lists here) and
    ``pid_job`` (what slurmd says of the asking pid) are the test's to set."""

    def __init__(self, tmp: Path) -> None:
        self.pid_job: str | Refused = JOB
        self.socket = tmp / "run" / "stage-credentials.sock"
        self.jobs: list[NodeJob] | None = [NodeJob(JOB, os.getuid(), "sid-1")]
        self.clock = dt.datetime.now(dt.UTC)
        self.broker = Broker(
            role_arn=ROLE,
            node=NODE,
            region="us-east-1",
            sts=boto3.client("sts", region_name="us-east-1"),
            jobs=lambda: self.jobs,
            job_of=self._job_of,
            now=lambda: self.clock,
        )
        self.server = listen(self.socket)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _job_of(self, pid: int) -> str:
        assert pid == os.getpid(), "the kernel names the asking process"
        if isinstance(self.pid_job, Refused):
            raise self.pid_job
        return self.pid_job

    def _serve(self) -> None:
        while not self._stop:
            try:
                serve_one(self.server, self.broker)
            except OSError:
                return

    def stop(self) -> None:
        self._stop = True
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept (close alone does not)
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with mock_aws():
        served = Node(tmp_path)
        try:
            yield served
        finally:
            served.stop()
    assert not served.thread.is_alive()


def test_a_job_of_its_own_user_gets_the_reader_session_and_again_until_it_nears_its_end(
    node: Node,
) -> None:
    first = ask_broker(node.socket)
    assert first["Version"] == 1 and first["Region"] == "us-east-1"
    assert first["AccessKeyId"] and first["SecretAccessKey"] and first["SessionToken"]
    expires = dt.datetime.fromisoformat(first["Expiration"])
    assert ask_broker(node.socket)["AccessKeyId"] == first["AccessKeyId"]

    node.clock = expires - REUSE_MARGIN + dt.timedelta(seconds=1)
    assert ask_broker(node.socket)["AccessKeyId"] != first["AccessKeyId"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pid_job": Refused("pid 9: not a process of a Slurm job")}, "not a process of a"),
        ({"jobs": [NodeJob(JOB, os.getuid() + 1, "sid-1")]}, f"job {JOB} is not uid"),
        ({"jobs": [NodeJob("7", os.getuid(), "sid-2")]}, f"job {JOB} is not an intake job"),
        ({"jobs": None}, "Slurm did not answer which jobs run here"),
    ],
    ids=["no-job", "another-users-job", "job-not-here", "slurm-silent"],
)
def test_a_process_that_cannot_show_its_own_job_here_is_refused_by_name(
    node: Node, change: dict[str, Any], reason: str
) -> None:
    if "pid_job" in change:
        node.pid_job = change["pid_job"]
    if "jobs" in change:
        node.jobs = change["jobs"]
    with pytest.raises(StagingError, match="the node's S3 credential broker: refused: ") as err:
        ask_broker(node.socket)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_a_node_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match=r"no S3 credential broker at .*stage_buckets="):
        ask_broker(tmp_path / "absent.sock")


def test_a_staging_job_reads_s3_only_with_the_brokers_session(
    node: Node, benchmark_tar: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials in the job's environment or files: what reads the bucket is the broker's."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    s3.create_bucket(Bucket="lab-data")
    s3.put_object(Bucket="lab-data", Key="relion_benchmark.tar.gz", Body=benchmark_tar)

    client = s3_client_from_broker(node.socket)
    granted = client._request_signer._credentials.get_frozen_credentials()
    assert granted.access_key == ask_broker(node.socket)["AccessKeyId"]

    dest = tmp_path / "bench"
    argv = ["fetch", "--source", "s3://lab-data/relion_benchmark.tar.gz", "--dest", str(dest)]
    assert staging_main([*argv, "--s3-credentials", str(node.socket)]) == 0
    assert (dest / MARKER).is_file()

    node.jobs = []
    assert (
        staging_main(
            [*argv, "--dest", str(tmp_path / "again"), "--s3-credentials", str(node.socket)]
        )
        == 1
    )
