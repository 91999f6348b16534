"""The node's S3 credential broker and the staging job's client of it, over a real Unix socket.

The peer is this test process, named by the kernel (SO_PEERCRED); which job slurmd says the pid
belongs to, what squeue lists and what the intake table holds are the test's to set (the real
``scontrol pidinfo`` and squeue answer in the container tests, tests/security); STS and S3 are
moto's, STS behind a spy that keeps the session policy each session was asked with (moto does
not enforce one). Each refusal reaches the staging job as one line naming why, and the staging
run then fails without looking for credentials anywhere else.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot.intake.table import ACCEPTED, REJECTED, SUBMITTING, Record
from relion_spot.jobs.dataset import DATASETS_DIR
from relion_spot.jobs.dataset import main as dataset_main
from relion_spot.node.job_reports import NodeJob, squeue_node_jobs
from relion_spot.node.stage_credentials import (
    REUSE_MARGIN,
    Broker,
    Refused,
    listen,
    serve,
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
SID = "sid-1"
SOURCE = "s3://lab-data/relion_benchmark.tar.gz"


def _accepted(**change: Any) -> Record:
    values: dict[str, Any] = {
        "submission_id": SID,
        "state": ACCEPTED,
        "job_id": JOB,
        "template": "stage",
        "parameters": json.dumps({"source": SOURCE, "dest": "/data/bench"}),
    }
    values.update(change)
    return Record(**values)


class SpySts:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.policies: list[dict[str, Any]] = []
        self.roles: list[str] = []

    def assume_role(self, **kwargs: Any) -> Any:
        self.policies.append(json.loads(kwargs["Policy"]))
        self.roles.append(kwargs["RoleArn"])
        return self.client.assume_role(**kwargs)


class Node:
    """A broker serving on a socket in threads; what it is told is the test's to set."""

    def __init__(
        self, tmp: Path, *, role: str = ROLE, exchange_role: str = "", bucket: str = ""
    ) -> None:
        self.socket = tmp / "run" / "stage-credentials.sock"
        self.jobs: list[NodeJob] | None = [NodeJob(JOB, os.getuid(), SID)]
        self.pid_job: str | Refused = JOB
        self.record: Record | None = _accepted()
        self.clock = dt.datetime.now(dt.UTC)
        self.sts = SpySts(boto3.client("sts", region_name="us-east-1"))
        self.broker = Broker(
            role_arn=role,
            exchange_role_arn=exchange_role,
            exchange_bucket=bucket,
            node=NODE,
            region="us-east-1",
            sts=self.sts,
            jobs=lambda: self.jobs,
            submission=self._submission,
            job_of=self._job_of,
            now=lambda: self.clock,
        )
        self.server = listen(self.socket)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=serve, args=(self.server, self.broker), kwargs={"stop": self.stop_event}
        )
        self.thread.start()

    def _job_of(self, pid: int) -> str:
        assert pid == os.getpid(), "the kernel names the asking process"
        if isinstance(self.pid_job, Refused):
            raise self.pid_job
        return self.pid_job

    def _submission(self, sid: str) -> Record | None:
        return self.record if self.record and self.record.submission_id == sid else None

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.server.close()
        self.thread.join(timeout=10)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with mock_aws():
        served = Node(tmp_path)
        try:
            yield served
        finally:
            served.stop()
    assert not served.thread.is_alive()


def test_an_approved_stage_job_gets_a_session_narrowed_to_its_object_until_it_nears_its_end(
    node: Node,
) -> None:
    first = ask_broker(node.socket)
    assert first["Version"] == 1 and first["Region"] == "us-east-1"
    assert first["AccessKeyId"] and first["SecretAccessKey"] and first["SessionToken"]
    (policy,) = node.sts.policies
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::lab-data/relion_benchmark.tar.gz",
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::lab-data",
            "Condition": {"StringEquals": {"s3:prefix": "relion_benchmark.tar.gz"}},
        },
    ]
    expires = dt.datetime.fromisoformat(first["Expiration"])
    assert ask_broker(node.socket)["AccessKeyId"] == first["AccessKeyId"]
    assert len(node.sts.policies) == 1, "a fresh session is handed out again, not re-assumed"

    node.clock = expires - REUSE_MARGIN + dt.timedelta(seconds=1)
    assert ask_broker(node.socket)["AccessKeyId"] != first["AccessKeyId"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pid_job": Refused("pid 9: not a process of a Slurm job")}, "not a process of a"),
        ({"jobs": [NodeJob(JOB, os.getuid() + 1, SID)]}, f"job {JOB} is not uid"),
        ({"jobs": [NodeJob("7", os.getuid(), SID)]}, f"job {JOB} is not an intake job"),
        ({"record": None}, f"job {JOB}: no submission '{SID}' in the intake table"),
        ({"record": _accepted(job_id="41")}, f"submission {SID} is accepted for job 41"),
        ({"record": _accepted(state=REJECTED)}, f"submission {SID} is rejected for job"),
        ({"record": _accepted(template="select")}, "is a select job, not stage, class3d"),
        (
            {"record": _accepted(parameters='{"source": "https://x.org/a.tar.gz"}')},
            "stages from no s3:// object",
        ),
        (
            {"record": _accepted(parameters='{"source": "s3://lab-data/*"}')},
            "stages from no s3:// object",
        ),
        (
            {"record": _accepted(template="class3d", parameters='{"preset": "benchmark"}')},
            "names as its dataset no s3:// object",
        ),
        (
            {
                "record": _accepted(
                    template="class3d",
                    parameters=json.dumps(
                        {
                            "preset": "benchmark",
                            "dataset": "s3://lab-data/other.tar",
                            "--dataset": SOURCE,
                        }
                    ),
                )
            },
            "names as its dataset no s3:// object",
        ),
    ],
    ids=[
        "not-a-job",
        "another-users-job",
        "job-not-here",
        "forged-comment",
        "another-jobs-submission",
        "rejected",
        "not-stage",
        "http-source",
        "wildcard-source",
        "class3d-without-dataset",
        "class3d-dataset-named-twice",
    ],
)
def test_a_process_the_intake_did_not_approve_is_refused_by_name(
    node: Node, change: dict[str, Any], reason: str
) -> None:
    for name, value in change.items():
        setattr(node, name, value)
    with pytest.raises(StagingError, match="the node's S3 credential broker: refused: ") as err:
        ask_broker(node.socket, patience_s=0)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)
    assert node.sts.policies == [], "nothing was assumed"


def test_a_job_that_starts_before_its_acceptance_is_written_asks_again(node: Node) -> None:
    node.record = _accepted(state=SUBMITTING, job_id=None)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            node.record = _accepted()

    assert ask_broker(node.socket, sleep=sleep)["AccessKeyId"]
    assert waits == [1.0, 2.0]
    node.record = _accepted(state=SUBMITTING, job_id=None)
    with pytest.raises(StagingError, match="is still being decided"):
        ask_broker(node.socket, patience_s=0)


def test_a_connection_held_open_stalls_no_one_and_a_fault_is_answered(node: Node) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for held in idle:
            held.connect(str(node.socket))
        started = time.monotonic()
        assert ask_broker(node.socket)["AccessKeyId"]
        assert time.monotonic() - started < 5
    finally:
        for held in idle:
            held.close()

    def broken(sid: str) -> Record | None:
        raise RuntimeError("a bug the test put here")

    node.broker.submission = broken
    with pytest.raises(StagingError, match="the broker failed on this request"):
        ask_broker(node.socket, patience_s=0)
    node.broker.submission = node._submission
    assert ask_broker(node.socket)["AccessKeyId"], "the broker goes on serving"


def test_a_socket_served_by_anyone_but_the_broker_is_not_believed(node: Node) -> None:
    with pytest.raises(StagingError, match=r"is served by uid \d+, not the node's broker"):
        ask_broker(node.socket, server_uid=os.getuid() + 1)


def test_a_node_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match=r"no S3 credential broker at .*stage_buckets="):
        ask_broker(tmp_path / "absent.sock")


def test_an_unreadable_squeue_answer_is_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are not UTF-8 (a job's name is its owner's to choose), an entry without its
    fields, text that is not JSON: the node's daemons read what they can and go on."""
    squeue = tmp_path / "squeue"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")

    def answers(body: bytes) -> list[NodeJob] | None:
        squeue.write_bytes(b"#!/bin/sh\ncat <<'EOF'\n" + body + b"\nEOF\n")
        squeue.chmod(0o755)
        return squeue_node_jobs(NODE)

    intake_job = (
        b'{"job_id": 5, "user_id": 1000, "job_state": ["RUNNING"], "comment": "relion-spot:s",'
        b' "name": "\xff"}'
    )
    assert answers(b'{"jobs": [' + intake_job + b"]}") == [NodeJob("5", 1000, "s")]
    assert answers(b'{"jobs": [{"comment": "relion-spot:s"}]}') is None
    assert answers(b"slurm_load_jobs error: Unable to contact slurm controller") is None


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
    argv = ["fetch", "--source", SOURCE, "--dest", str(dest)]
    assert staging_main([*argv, "--s3-credentials", str(node.socket)]) == 0
    assert (dest / MARKER).is_file()

    node.jobs = []
    again = ["fetch", "--source", SOURCE, "--dest", str(tmp_path / "again")]
    assert staging_main([*again, "--s3-credentials", str(node.socket)]) == 1


def test_a_class3d_job_copies_its_dataset_from_s3_to_scratch_with_the_brokers_session(
    node: Node,
    benchmark_tar: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The data set's tarball, read with a session narrowed to it, unpacked on scratch; the
    directory RELION runs in is the one answer on stdout. The next job on the node never reads
    what an earlier one left there, even with a marker saying verified, nor follows its links."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab-data")
    s3.put_object(Bucket="lab-data", Key="relion_benchmark.tar.gz", Body=benchmark_tar)
    node.record = _accepted(
        template="class3d", parameters=json.dumps({"preset": "benchmark", "dataset": SOURCE})
    )
    scratch = tmp_path / "scratch"
    argv = ["--source", SOURCE, "--particles", "Particles/shiny_2sets.star"]
    argv += ["--reference", "emd_2660.map:mrc", "--scratch", str(scratch)]
    argv += ["--s3-credentials", str(node.socket)]

    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    assert dataset_main(argv) == 0
    root = Path(capsys.readouterr().out.strip())
    assert root == scratch / DATASETS_DIR / f"job-{JOB}" / "relion_benchmark"
    assert (root / "Particles" / "shiny_2sets.star").is_file()
    assert (root / "emd_2660.map").is_file()
    (policy,) = node.sts.policies
    assert policy["Statement"][0]["Resource"] == "arn:aws:s3:::lab-data/relion_benchmark.tar.gz"

    # The next job: what job 42 left (now "planted": the particles emptied) and a link to
    # another project are gone before it fetches its own copy.
    (root / "Particles" / "shiny_2sets.star").write_text("planted")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (scratch / DATASETS_DIR / "job-43").symlink_to(victim)
    node.jobs = [NodeJob("43", os.getuid(), SID)]
    node.pid_job = "43"
    node.record = _accepted(
        job_id="43",
        template="class3d",
        parameters=json.dumps({"preset": "benchmark", "dataset": SOURCE}),
    )
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    assert dataset_main(argv) == 0
    again = Path(capsys.readouterr().out.strip())
    assert again == scratch / DATASETS_DIR / "job-43" / "relion_benchmark"
    assert (again / "Particles" / "shiny_2sets.star").read_text() != "planted"
    assert not root.exists(), "job 42's set was removed"
    assert (victim / "keep.txt").read_text() == "mine", "the link was removed, not followed"
    assert len(node.sts.policies) == 2, "fetched again, with a session of its own"


def _upload_unpacked(s3: Any, tarball: bytes, tmp_path: Path, prefix: str) -> None:
    """The benchmark set's files as they are, under ``prefix`` (no archive)."""
    unpacked = tmp_path / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        tar.extractall(unpacked, filter="data")
    for path in sorted(unpacked.rglob("*")):
        if path.is_file():
            key = prefix + path.relative_to(unpacked).as_posix()
            s3.put_object(Bucket="lab-data", Key=key, Body=path.read_bytes())


def test_a_dataset_under_a_prefix_is_copied_file_by_file_with_a_session_for_that_prefix(
    node: Node,
    benchmark_tar: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No archive: every object under the prefix arrives as it is, checked by size and by
    reading the STAR and the map; the session may read under that prefix and list it alone."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab-data")
    _upload_unpacked(s3, benchmark_tar, tmp_path, "sets/bench/")
    s3.put_object(Bucket="lab-data", Key="sets/bench-other/secret.txt", Body=b"not this")
    prefix = "s3://lab-data/sets/bench/"
    node.record = _accepted(
        template="class3d", parameters=json.dumps({"preset": "benchmark", "dataset": prefix})
    )
    scratch = tmp_path / "scratch"
    argv = ["--source", prefix, "--particles", "Particles/shiny_2sets.star"]
    argv += ["--reference", "emd_2660.map:mrc", "--scratch", str(scratch)]
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    assert dataset_main([*argv, "--s3-credentials", str(node.socket)]) == 0
    captured = capsys.readouterr()
    root = Path(captured.out.strip())
    assert root == scratch / DATASETS_DIR / f"job-{JOB}" / "relion_benchmark"
    assert (root / "Particles" / "shiny_2sets.star").is_file()
    assert "dataset: verified: " in captured.err
    assert not list(scratch.rglob("secret.txt")), "only the prefix's own objects"
    (policy,) = node.sts.policies
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::lab-data/sets/bench/*",
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::lab-data",
            "Condition": {"StringLike": {"s3:prefix": "sets/bench/*"}},
        },
    ]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sets/bench/../escape.txt", "'../escape.txt' under the prefix would be written outside"),
        ("sets/bench/a//b.txt", "'a//b.txt' under the prefix would be written outside"),
    ],
)
def test_a_prefix_whose_keys_would_leave_the_directory_is_refused_before_any_copy(
    node: Node,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    message: str,
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab-data")
    s3.put_object(Bucket="lab-data", Key="sets/bench/particles.star", Body=b"data_")
    s3.put_object(Bucket="lab-data", Key=key, Body=b"x")
    argv = ["--source", "s3://lab-data/sets/bench/", "--particles", "particles.star"]
    argv += ["--reference", "x.mrc", "--scratch", str(tmp_path / "scratch")]
    assert dataset_main(argv, s3_client=s3) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err, captured.err
    assert not (tmp_path / "escape.txt").exists()
    assert not list((tmp_path / "scratch").rglob("particles.star")), "nothing was copied"


def test_a_set_whose_top_directory_would_split_a_bind_is_refused(
    node: Node, benchmark_tar: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Apptainer's --bind splits on , and :, so a top directory named ``t,x:y`` would rebind the
    job's own directory elsewhere: refused, nothing printed for the script to use."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab-data")
    _upload_unpacked(s3, benchmark_tar, tmp_path, "sets/odd/")
    for item in s3.list_objects_v2(Bucket="lab-data", Prefix="sets/odd/")["Contents"]:
        renamed = item["Key"].replace("relion_benchmark/", "t,x:y/")
        s3.copy_object(
            Bucket="lab-data", Key=renamed, CopySource={"Bucket": "lab-data", "Key": item["Key"]}
        )
        s3.delete_object(Bucket="lab-data", Key=item["Key"])
    argv = ["--source", "s3://lab-data/sets/odd/", "--particles", "Particles/shiny_2sets.star"]
    argv += ["--reference", "emd_2660.map", "--scratch", str(tmp_path / "scratch")]
    assert dataset_main(argv, s3_client=s3) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "top directory" in captured.err and "is not valid" in captured.err


def test_a_dataset_that_lacks_the_named_particles_fails_with_nothing_on_stdout(
    node: Node, benchmark_tar: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab-data")
    s3.put_object(Bucket="lab-data", Key="relion_benchmark.tar.gz", Body=benchmark_tar)
    argv = ["--source", SOURCE, "--particles", "Particles/other.star", "--reference", "x.mrc"]
    argv += ["--scratch", str(tmp_path / "scratch")]
    assert dataset_main(argv, s3_client=s3) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Particles/other.star" in captured.err


EXCHANGE_ROLE = "arn:aws:iam::123456789012:role/lab-ExchangeJobRole-abc"
EXCHANGE = "lab-exchange-1a2b"


@pytest.fixture
def exchange_node(tmp_path: Path) -> Iterator[Node]:
    """A CPU node of a cluster without stage buckets: its broker serves exports alone."""
    with mock_aws():
        served = Node(tmp_path / "exchange", role="", exchange_role=EXCHANGE_ROLE, bucket=EXCHANGE)
        served.record = _accepted(template="export", parameters="{}")
        try:
            yield served
        finally:
            served.stop()


def test_an_approved_export_may_write_only_under_its_own_prefix_which_the_broker_names(
    exchange_node: Node,
) -> None:
    reply = ask_broker(exchange_node.socket)
    assert (reply["Bucket"], reply["Prefix"]) == (EXCHANGE, f"out/{SID}/")
    assert exchange_node.sts.roles == [EXCHANGE_ROLE]
    (policy,) = exchange_node.sts.policies
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": f"arn:aws:s3:::{EXCHANGE}/out/{SID}/*",
        }
    ]


def test_a_stage_on_a_node_without_its_role_and_an_export_without_an_exchange_are_refused(
    exchange_node: Node, node: Node
) -> None:
    exchange_node.record = _accepted()
    with pytest.raises(StagingError, match="this cluster has no stage bucket role"):
        ask_broker(exchange_node.socket, patience_s=0)
    node.record = _accepted(template="export", parameters="{}")
    with pytest.raises(StagingError, match="this node has no results exchange"):
        ask_broker(node.socket, patience_s=0)
    assert exchange_node.sts.policies == node.sts.policies == []


def test_an_approved_import_may_read_only_its_own_uploads(exchange_node: Node) -> None:
    exchange_node.record = _accepted(template="import", parameters='{"project_dir": "/data/p"}')
    reply = ask_broker(exchange_node.socket)
    assert (reply["Bucket"], reply["Prefix"]) == (EXCHANGE, f"in/{SID}/")
    (policy,) = exchange_node.sts.policies
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{EXCHANGE}/in/{SID}/*",
        }
    ]
