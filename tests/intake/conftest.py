"""The intake against moto (in-process, or its server for a drainer run as a real process) and
a stand-in for Slurm's sbatch and squeue: small executables that keep their jobs in files.

The stand-in behaves as the drainer needs Slurm to: sbatch prints a new job id and remembers the
job with its --comment; squeue lists every remembered job as ``squeue --json`` does (the fields
the intake reads). Files in its directory change its behaviour: ``down``
(controller unreachable), ``sbatch-down`` (the same for sbatch alone), ``refuse`` (sbatch
refuses with that text), ``kill-parent`` (sbatch SIGKILLs the process that ran it once a
submission's job exists; the file is then removed), ``state-<id>`` (``STATE|REASON|DEPENDENCY``
of a job, listed as its job_state, state_reason and dependency; default pending).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relion_spot.intake.drain import Drainer
from relion_spot.intake.prepare import JobPreparer
from relion_spot.intake.slurm import SlurmJobs
from relion_spot.intake.table import IntakeTable, create_table
from relion_spot.settings import Settings
from relion_spot.slurm.spec import ClusterSpec, spec_from_settings

QUEUE = "intake"
TABLE = "intake-submissions"
MIN_JOB_AGE = 3600

SBATCH = r"""#!/bin/bash
# Stand-in for Slurm's sbatch (see tests/intake/conftest.py).
set -u
dir=$(dirname "$0")
script=$(cat)
comment="(null)"
for arg in "$@"; do
  case $arg in --comment=*) comment=${arg#--comment=} ;; esac
done
printf '%s\n' "$*" >> "$dir/sbatch-calls"
env | grep '^RELION_SPOT_' | sort | tr '\n' ' ' >> "$dir/sbatch-env"
echo >> "$dir/sbatch-env"
if [ -e "$dir/down" ] || [ -e "$dir/sbatch-down" ]; then
  echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller" \
    "(connect failure)" >&2
  exit 1
fi
if [ -e "$dir/refuse" ]; then
  echo "sbatch: error: Batch job submission failed: $(cat "$dir/refuse")" >&2
  exit 1
fi
id=$(( $(cat "$dir/next-id") + 1 ))
echo "$id" > "$dir/next-id"
printf '%s' "$script" > "$dir/script-$id"
printf '%s|%s\n' "$id" "$comment" >> "$dir/jobs"
if [ -e "$dir/kill-parent" ] && [[ $comment == relion-spot:* ]]; then
  rm -f "$dir/kill-parent"
  kill -KILL "$PPID"
  exit 0
fi
echo "$id"
"""

SQUEUE = r"""
# Stand-in for Slurm's squeue --json (see tests/intake/conftest.py).
import json
import sys
from pathlib import Path

folder = Path(sys.argv[0]).parent
with (folder / "squeue-calls").open("a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\n")
if (folder / "down").exists():
    sys.exit("squeue: error: Unable to contact slurm controller (connect failure)")
jobs = []
for line in (folder / "jobs").read_text().splitlines():
    job_id, _, comment = line.partition("|")
    state_file = folder / f"state-{job_id}"
    state = state_file.read_text() if state_file.exists() else "PENDING|None|"
    flags, reason, dependency = state.split("|")
    jobs.append({
        "job_id": int(job_id), "user_id": 1000, "job_state": flags.split("+"),
        "comment": "" if comment == "(null)" else comment, "state_reason": reason,
        "dependency": dependency, "partition": "cpu", "nodes": "",
        "node_count": {"set": True, "infinite": False, "number": 1},
    })
print(json.dumps({"jobs": jobs, "meta": {}, "errors": [], "warnings": []}))
"""


@dataclass
class FakeSlurm:
    dir: Path

    @property
    def sbatch(self) -> Path:
        return self.dir / "sbatch"

    @property
    def squeue(self) -> Path:
        return self.dir / "squeue"

    def sbatch_environments(self) -> list[str]:
        """The RELION_SPOT_* variables each sbatch call saw, as one sorted line per call."""
        calls = self.dir / "sbatch-env"
        return calls.read_text().splitlines() if calls.exists() else []

    def sbatch_calls(self) -> list[str]:
        calls = self.dir / "sbatch-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def squeue_calls(self) -> list[str]:
        calls = self.dir / "squeue-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def jobs(self) -> list[str]:
        return (self.dir / "jobs").read_text().splitlines()

    def script(self, job_id: str) -> str:
        return (self.dir / f"script-{job_id}").read_text()

    def forget(self, job_id: str) -> None:
        """What slurmctld does MinJobAge after a job ends: squeue no longer lists it."""
        kept = [line for line in self.jobs() if line.split("|")[0] != job_id]
        (self.dir / "jobs").write_text("".join(f"{line}\n" for line in kept))

    def set_state(
        self, job_id: str, state: str, reason: str = "None", dependency: str = ""
    ) -> None:
        """``state``: the base state and its flags as Slurm's JSON lists them, joined by ``+``
        (``COMPLETED+COMPLETING``)."""
        self.set(f"state-{job_id}", f"{state}|{reason}|{dependency}")

    def set(self, name: str, text: str = "") -> None:
        (self.dir / name).write_text(text)

    def clear(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def jobs_object(self) -> SlurmJobs:
        return SlurmJobs(sbatch=(str(self.sbatch),), squeue=(str(self.squeue),))


@pytest.fixture
def fake_slurm(tmp_path: Path) -> FakeSlurm:
    slurm = FakeSlurm(tmp_path / "slurm")
    slurm.dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("squeue", f"#!{sys.executable}{SQUEUE}")):
        (slurm.dir / name).write_text(text)
        (slurm.dir / name).chmod(0o755)
    (slurm.dir / "next-id").write_text("41\n")
    (slurm.dir / "jobs").write_text("7|(null)\n")  # someone else's job, without a comment
    return slurm


def cluster_spec() -> ClusterSpec:
    return spec_from_settings(Settings(gpus=(1,)), 1, min_job_age=MIN_JOB_AGE)


def make_queue_and_table(sqs: Any, dynamodb: Any, *, visibility: int = 300) -> str:
    """The queue as the construct makes it (dead-letter queue after 5 receives) and the table."""
    dead = sqs.create_queue(QueueName=f"{QUEUE}-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=QUEUE,
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": f'{{"deadLetterTargetArn":"{dead_arn}","maxReceiveCount":"5"}}',
        },
    )["QueueUrl"]
    create_table(dynamodb, TABLE)
    return url


@dataclass
class Intake:
    sqs: Any
    dynamodb: Any
    queue_url: str
    table: IntakeTable
    slurm: FakeSlurm

    def drainer(self, **overrides: Any) -> Drainer:
        options: dict[str, Any] = {
            "sqs": self.sqs,
            "table": self.table,
            "queue_url": self.queue_url,
            "slurm": self.slurm.jobs_object(),
            "prepare": JobPreparer.from_spec(cluster_spec()),
            "campaign_steps": JobPreparer.from_spec(cluster_spec()).later_steps,
            "min_job_age": MIN_JOB_AGE,
            "wait_seconds": 0,
        }
        options.update(overrides)
        return Drainer(**options)

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def queued(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(v) for v in attributes.values())

    def items(self) -> list[dict[str, Any]]:
        return self.dynamodb.scan(TableName=TABLE)["Items"]


@pytest.fixture
def intake(moto_aws: None, fake_slurm: FakeSlurm) -> Intake:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    url = make_queue_and_table(sqs, dynamodb)
    return Intake(sqs, dynamodb, url, IntakeTable(dynamodb, TABLE), fake_slurm)


@pytest.fixture
def moto_server() -> Iterator[str]:
    """moto's server on loopback (a free port) for processes other than this one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"moto's server exited ({server.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto's server did not answer within 30 s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
