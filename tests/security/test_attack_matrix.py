"""The attack matrix of the node side: what a job (the job user, through Slurm) tries, refused.

Each case is one attack, as real as this machine allows: jobs submitted through the real Slurm
of an embedded cloud (node containers booted by the reconciler, the metadata service and moto on
the cluster network, the node's firewall rule inside its container), or the real file system
where the behaviour lives there. Each asserts the refusal, the record it leaves, and that
nothing of anyone else's was lost. The cluster is shared by the module's container cases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relion_spot import tags
from relion_spot.intake.client import submit, wait_for_acceptance
from relion_spot.intake.config import KEY, QUEUE_URL_ENV
from relion_spot.intake.table import ACCEPTED, IntakeTable, Record
from relion_spot.local.embedded import INTAKE_TABLE, SPOT_EVENTS_TABLE, EmbeddedCloud
from relion_spot.node.imds import IMDS_URL_ENV
from relion_spot.node.metadata_guard import GUARD_ENV
from relion_spot.node.stage_credentials import SOCKET as BROKER_SOCKET
from relion_spot.settings import Settings
from relion_spot.slurm.local import CONTAINERS_MOUNT, docker, wait_until
from relion_spot.staging.cli import MARKER as STAGED_MARKER
from tests.slurm.test_containers import job, sbatch

STAGE_BUCKET = "lab-data"
STAGE_KEY = "relion_benchmark.tar.gz"

PROBE = """\
import http.client, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
TTL, TOKEN = "X-aws-ec2-metadata-token-ttl-seconds", "X-aws-ec2-metadata-token"
def call(method, path, headers):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    conn.request(method, url.path.rstrip("/") + path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode()
try:
    status, token = call("PUT", "/latest/api/token", {TTL: "60"})
    status, answer = call("GET", "/latest/meta-data/instance-id", {TOKEN: token})
    print("answered", status, answer)
except ConnectionRefusedError:
    print("refused")
except OSError as err:
    print("other", type(err).__name__)
"""


@pytest.fixture(scope="module")
def cloud(slurm_images: None) -> Iterator[EmbeddedCloud]:
    work = Path(tempfile.mkdtemp(prefix="relion-spot-attack-"))
    try:
        with EmbeddedCloud.start(
            prefix=f"relion-spot-test-attack-{os.getpid()}",
            settings=Settings(gpus=(1,), stage_buckets=(STAGE_BUCKET,)),
            gpu_count=1,
            work_dir=work,
        ) as cloud:
            (work / "data" / "probe.py").write_text(PROBE)
            yield cloud
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _data(cloud: EmbeddedCloud) -> Path:
    assert cloud.local.data_dir is not None
    return cloud.local.data_dir


def _run_to_end(cloud: EmbeddedCloud, args: list[str], timeout: float = 180) -> int:
    job_id = sbatch(cloud.local, ["-p", "gpu", "--gres=gpu:1", *args])
    wait_until(
        lambda: job(cloud.local, job_id).get("JobState") in ("COMPLETED", "FAILED"),
        timeout=timeout,
        what=lambda: f"job {job_id} to end ({job(cloud.local, job_id)})\n{cloud.local.logs()}",
    )
    return job_id


def _node_of(cloud: EmbeddedCloud, job_id: int) -> tuple[str, str]:
    """The node the job ran on and its container."""
    node = job(cloud.local, job_id)["NodeList"]
    return node, cloud.local.node_container(node)


def _instance_of(cloud: EmbeddedCloud, node: str) -> dict:
    """The running instance that plays ``node``."""
    (instance,) = [
        i
        for i in cloud.instances()
        if i["State"]["Name"] == "running"
        and {t["Key"]: t["Value"] for t in i.get("Tags") or []}.get(tags.NODE) == node
    ]
    return instance


def test_a_job_cannot_reach_the_metadata_service_and_root_on_its_node_can(
    cloud: EmbeddedCloud,
) -> None:
    """The node role's credentials are one metadata request away: a job is refused it."""
    imds = cloud.reconciler.imds
    assert imds is not None
    base = f"http://{imds.host}:{imds.port}"
    job_id = _run_to_end(
        cloud,
        ["-o", "/data/imds-%j.out", "--wrap", f"/usr/bin/python3 -I /data/probe.py {base}/i-0"],
    )
    assert (_data(cloud) / f"imds-{job_id}.out").read_text().split() == ["refused"]

    node, container = _node_of(cloud, job_id)
    instance = _instance_of(cloud, node)
    as_root = docker(
        "exec", container, "/usr/bin/python3", "-I", "/data/probe.py",
        imds.url_for(instance["InstanceId"]),
    ).stdout.split()  # fmt: skip
    assert as_root == ["answered", "200", instance["InstanceId"]]
    # The record: the node said, before slurmd started, that the service is shut to jobs.
    logs = cloud.local.logs(container)
    assert f"metadata service {imds.host}:{imds.port} refused to non-root users" in logs
    assert logs.index("refused to non-root users") < logs.index("exec slurmd")
    # Nothing lost: the spot watcher (root) still reads the notice path.
    watcher = docker("exec", container, "pgrep", "-f", "relion_spot.node.spot_watcher", check=False)
    assert watcher.returncode == 0, f"no spot watcher on {node}"


@pytest.mark.parametrize(
    ("mode", "net_admin", "message"),
    [
        ("install", False, "cannot add the metadata firewall rule"),
        ("verify", False, "the host has no firewall rule"),
    ],
)
def test_a_node_that_cannot_shut_the_metadata_service_never_starts_slurmd(
    cloud: EmbeddedCloud, mode: str, net_admin: bool, message: str
) -> None:
    """Fail closed: without the rule (no NET_ADMIN to add it; a host that did not add it), the
    node stops with one line and no job can ever land on it."""
    imds = cloud.reconciler.imds
    assert imds is not None
    node = f"gpu-{mode}"
    env = {**cloud.env, IMDS_URL_ENV: f"http://{imds.host}:{imds.port}/i-0", GUARD_ENV: mode}
    container = cloud.local.start_node(node, env=env, net_admin=net_admin)
    try:
        wait_until(
            lambda: not cloud.local.is_running(container), timeout=60, what=f"{node} to stop"
        )
        state = docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
        logs = cloud.local.logs(container)
        assert state == "2", logs
        (line,) = [x for x in logs.splitlines() if x.startswith("relion-spot entrypoint:")]
        assert message in line and "Traceback" not in logs and "exec slurmd" not in logs
    finally:
        cloud.local.remove_node(node)


def _accepted(cloud: EmbeddedCloud, submission_id: str, job_id: int) -> IntakeTable:
    table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
    table.finish(Record(submission_id, ACCEPTED, job_id=str(job_id), decided_at=1))
    return table


REPORTER = """\
import os, sys, time
from relion_spot.intake.report import ProgressReporter
record = {"current_iteration": 2, "requested_iterations": 5, "resolution_angstrom": 21.5,
          "iterations": [{"iteration": 2, "resolution_angstrom": 21.5,
                          "class_distribution": [0.5, 0.5]}]}
reporter = ProgressReporter.from_env(os.environ)
print("written" if reporter.publish(record, state="RUNNING") else "not written", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _held_job(cloud: EmbeddedCloud, submission_id: str, name: str, seconds: int = 8) -> int:
    """A held job that publishes one report and then runs ``seconds`` more."""
    (_data(cloud) / "reporter.py").write_text(REPORTER)
    return sbatch(
        cloud.local,
        [
            "-p", "gpu", "--gres=gpu:1", "--hold", f"--comment=relion-spot:{submission_id}",
            "-o", f"/data/{name}-%j.out",
            # As the drainer's jobs get it: the submission id in the job's environment.
            "--wrap", f"RELION_SPOT_SUBMISSION_ID={submission_id} "
            f"/opt/relion-spot/venv/bin/python -I /data/reporter.py {seconds}",
        ],
    )  # fmt: skip


def _progress(table: IntakeTable, submission_id: str) -> dict | None:
    item = table.client.get_item(TableName=table.name, Key={KEY: {"S": submission_id}}).get(
        "Item", {}
    )
    return item.get("progress")


def test_a_job_reports_progress_without_credentials_and_cannot_write_anothers_record(
    cloud: EmbeddedCloud,
) -> None:
    """The job's report reaches its own item through the node's root forwarder (into the
    node's own report item) and the controller's relay; a job whose comment claims another
    submission is refused by the relay, and that submission's item is untouched."""
    victim_sid, attacker_sid = str(uuid.uuid4()), str(uuid.uuid4())
    victim = _held_job(cloud, victim_sid, "victim")
    table = _accepted(cloud, victim_sid, victim)
    cloud.local.run("scontrol", "release", str(victim))
    wait_until(
        lambda: _progress(table, victim_sid),
        timeout=180,
        what=lambda: f"job {victim}'s progress in its item\n{cloud.local.logs(tail=60)}",
    )
    stored = _progress(table, victim_sid)
    assert stored is not None and stored["M"]["job_id"] == {"S": str(victim)}
    assert stored["M"]["current_iteration"] == {"N": "2"}
    wait_until(
        lambda: job(cloud.local, victim).get("JobState") == "COMPLETED",
        timeout=60,
        what=f"job {victim} to end",
    )

    # The attacker: its own submission exists, but its job's comment names the victim's.
    # It runs until the relay's refusal is seen in the controller's log.
    attacker = _held_job(cloud, victim_sid, "attacker", seconds=600)
    _accepted(cloud, attacker_sid, attacker)
    cloud.local.run("scontrol", "release", str(attacker))
    controller_logs = ""

    def refused() -> bool:
        nonlocal controller_logs
        controller_logs = cloud.local.logs(tail=400)
        return (
            f"job {attacker}: report not relayed: submission {victim_sid} holds another job"
            in controller_logs
        )

    wait_until(refused, timeout=180, what=lambda: f"the relay's refusal\n{controller_logs}")
    cloud.local.run("scancel", str(attacker))
    assert _progress(table, victim_sid) == stored
    assert _progress(table, attacker_sid) is None
    assert "written" in (_data(cloud) / f"attacker-{attacker}.out").read_text()


def test_the_node_runs_no_report_that_is_a_planted_link(cloud: EmbeddedCloud) -> None:
    """A job plants its report as a link to a root-only file: the root forwarder does not
    follow it (the secret is never published), says so, and removes the link."""
    sid = str(uuid.uuid4())
    # It waits until the forwarder (polling, slow on a busy machine) has removed its link.
    planter = """\
import os, time
report = f"/run/relion-spot/job-reports/{os.environ['SLURM_JOB_ID']}.json"
os.symlink("/etc/relion-spot/node.env", report)
print("planted", flush=True)
for _ in range(1200):
    if not os.path.lexists(report):
        break
    time.sleep(0.5)
"""
    (_data(cloud) / "planter.py").write_text(planter)
    job_id = sbatch(
        cloud.local,
        [
            "-p", "gpu", "--gres=gpu:1", "--hold", f"--comment=relion-spot:{sid}",
            "-o", "/data/planter-%j.out",
            "--wrap", "/usr/bin/python3 -I /data/planter.py",
        ],
    )  # fmt: skip
    table = _accepted(cloud, sid, job_id)
    cloud.local.run("scontrol", "release", str(job_id))
    logs = ""

    def refused() -> bool:
        nonlocal logs
        fields = job(cloud.local, job_id)
        if fields.get("NodeList", "(null)") in ("", "(null)"):
            return False
        logs = cloud.local.logs(cloud.local.node_container(fields["NodeList"]))
        return f"job {job_id}: report refused and removed" in logs

    wait_until(refused, timeout=180, what=lambda: f"the forwarder's refusal\n{logs}")
    assert "not opened (Too many levels of symbolic links)" in logs
    assert _progress(table, sid) is None
    assert "planted" in (_data(cloud) / f"planter-{job_id}.out").read_text()
    item = json.dumps(table.client.get_item(TableName=table.name, Key={
        KEY: {"S": sid}})["Item"])  # fmt: skip
    assert "RELION_SPOT" not in item


HIJACK = """\
import pathlib
pathlib.Path("/data/hijack/IMPORTED").write_text("the planted package ran as the job")
raise SystemExit(0)
"""


def _claim_interpreter() -> str:
    """The interpreter words the rendered job template starts the project's code with."""
    from relion_spot.jobs import render

    match = re.search(r"\$\((\S+(?: -\w)*) -m relion_spot\.jobs\.claim", render(1, mode="local"))
    assert match is not None
    return match.group(1)


def test_a_package_planted_in_the_jobs_directory_is_never_imported(cloud: EmbeddedCloud) -> None:
    """A stage job can unpack anything into /data: a ``relion_spot/`` package there (and on
    PYTHONPATH) is not what the template's interpreter imports; the project's own code runs."""
    planted = _data(cloud) / "hijack" / "relion_spot"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text(HIJACK)
    os.chown(planted.parent, 1000, 1000)
    interpreter = _claim_interpreter()
    assert interpreter == "/opt/relion-spot/venv/bin/python -I"
    line = f"PYTHONPATH=/data/hijack {interpreter} -m relion_spot.jobs.claim --type Class3D"
    job_id = _run_to_end(
        cloud, ["--chdir=/data/hijack", "-o", "/data/hijack/isolated-%j.out", "--wrap", line]
    )
    assert not (planted.parent / "IMPORTED").exists()
    assert job(cloud.local, job_id)["JobState"] == "COMPLETED"
    assert (planted.parent / f"isolated-{job_id}.out").read_text().strip() == "Class3D/job001"
    # The plant is a real threat: the same line without -I imports it.
    exposed = line.replace(" -I", "")
    _run_to_end(cloud, ["--chdir=/data/hijack", "-o", "/dev/null", "--wrap", exposed])
    assert (planted.parent / "IMPORTED").exists()


def test_a_staging_job_reads_s3_only_through_the_nodes_broker(
    cloud: EmbeddedCloud, benchmark_tar: bytes
) -> None:
    """A stage submission from s3:// runs on a CPU node as the job user, which holds no
    credentials: the node's root broker hands it the stage reader's session and it stages. The
    same fetch from a job that is not the intake's, or that wrote the intake's comment on itself,
    is refused by the broker, by name, and stages nothing."""
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=STAGE_BUCKET)
    s3.put_object(Bucket=STAGE_BUCKET, Key=STAGE_KEY, Body=benchmark_tar)
    source = f"s3://{STAGE_BUCKET}/{STAGE_KEY}"
    table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
    submission = submit(
        cloud.client("sqs"),
        table,
        cloud.env[QUEUE_URL_ENV],
        parameters={"source": source, "dest": "/data/staged"},
        user="lab",
        template="stage",
    )
    job_id = int(wait_for_acceptance(table, submission.submission_id, timeout=120))
    wait_until(
        lambda: job(cloud.local, job_id).get("JobState") in ("COMPLETED", "FAILED"),
        timeout=300,
        what=lambda: (
            f"stage job {job_id} to end ({job(cloud.local, job_id)})\n{cloud.local.logs(tail=60)}"
        ),
    )
    output = (_data(cloud) / f"stage-{job_id}.out").read_text()
    assert job(cloud.local, job_id)["JobState"] == "COMPLETED", output
    assert "staged and verified in /data/staged" in output
    assert (_data(cloud) / "staged" / STAGED_MARKER).is_file()
    node, container = _node_of(cloud, job_id)
    assert node.startswith("cpu-")
    assert f"job {job_id} (uid 1000): S3 read of {source} until" in cloud.local.logs(container)

    # A job of the same user, not the intake's: without the intake's comment, and with one it
    # wrote itself naming the accepted submission (a comment is its owner's to set).
    line = (
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.staging fetch "
        f"--source {source} --dest /data/not-staged --s3-credentials {BROKER_SOCKET}"
    )
    forged = f"--comment=relion-spot:{submission.submission_id}"
    for extra, reason in (
        ([], "is not an intake job running on"),
        ([forged], f"submission {submission.submission_id} is accepted for job {job_id}"),
    ):
        outsider = sbatch(
            cloud.local,
            ["-p", "cpu", "-w", node, *extra, "-o", "/data/outsider-%j.out", "--wrap", line],
        )
        wait_until(
            lambda o=outsider: job(cloud.local, o).get("JobState") in ("COMPLETED", "FAILED"),
            timeout=120,
            what=lambda o=outsider: f"job {o} to end ({job(cloud.local, o)})",
        )
        assert job(cloud.local, outsider)["JobState"] == "FAILED"
        said = (_data(cloud) / f"outsider-{outsider}.out").read_text()
        assert f"refused: job {outsider}" in said and reason in said, said
        assert not (_data(cloud) / "not-staged" / STAGED_MARKER).exists()


def test_a_job_on_a_gpu_node_cannot_replace_an_image_others_run(cloud: EmbeddedCloud) -> None:
    """The SIF cache is the CPU partition's image job's to write: on a GPU node a job (RELION
    on a lab member's inputs) finds it read-only, and the image stays as it was."""
    cache = cloud.local.containers_dir
    assert cache is not None
    planted = cache / "relion-planted-check.sif"
    planted.write_bytes(b"an image")
    planted.chmod(0o666)
    line = (
        f"echo trojan > {CONTAINERS_MOUNT}/{planted.name} || echo refused-write; "
        f"touch {CONTAINERS_MOUNT}/new.sif || echo refused-create"
    )
    job_id = _run_to_end(cloud, ["-o", "/data/cache-write-%j.out", "--wrap", line])
    said = (_data(cloud) / f"cache-write-{job_id}.out").read_text()
    assert "refused-write" in said and "refused-create" in said, said
    assert "Read-only file system" in said, said
    assert planted.read_bytes() == b"an image"
    assert not (cache / "new.sif").exists()
    planted.unlink()


def test_a_link_planted_at_the_spot_event_log_is_not_followed_by_the_watcher(
    cloud: EmbeddedCloud,
) -> None:
    """A job links the node's spot-event log on /data to a file it cannot write; at the next
    reclaim the root watcher refuses the link (one log line), leaves the file as it was, and the
    event still reaches the spot-event table. (Last in the module: the reclaim takes the node.)"""
    victim = _data(cloud) / "victim.txt"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    events = f"/data/.relion-spot/spot-events/{cloud.cluster}.jsonl"
    plant = f"mkdir -p {os.path.dirname(events)} && ln -sfn /data/victim.txt {events}; sleep 60"
    job_id = sbatch(cloud.local, ["-p", "gpu", "--gres=gpu:1", "-o", "/dev/null", "--wrap", plant])
    wait_until(
        lambda: (
            job(cloud.local, job_id).get("JobState") == "RUNNING"
            and os.path.islink(_data(cloud) / events.removeprefix("/data/"))
        ),
        timeout=180,
        what=lambda: f"job {job_id} to plant its link ({job(cloud.local, job_id)})",
    )
    node, container = _node_of(cloud, job_id)
    instance = _instance_of(cloud, node)
    cloud.reconciler.reclaim(instance["InstanceId"])
    logs = ""

    def refused() -> bool:
        nonlocal logs
        logs = docker("exec", container, "cat", "/var/log/slurm/relion-spot-spot-watcher.log",
                      check=False).stdout  # fmt: skip
        return "event NOT recorded in" in logs

    # A notice poll and four Slurm round trips from the node come first: slow on a busy machine.
    wait_until(refused, timeout=90, what=lambda: f"the watcher's refusal on {node}\n{logs}")
    assert f"event NOT recorded in {events}" in logs and "is a link" in logs
    assert victim.read_text() == "keep\n"
    table = cloud.client("dynamodb")
    wait_until(
        lambda: (
            "Item"
            in table.get_item(
                TableName=SPOT_EVENTS_TABLE, Key={"instance_id": {"S": instance["InstanceId"]}}
            )
        ),
        timeout=60,
        what="the event in the spot-event table",
    )
