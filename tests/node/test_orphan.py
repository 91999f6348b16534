"""An idle node whose controller does not answer terminates itself: the spot watcher against a
real IMDSv2 server on 127.0.0.1 and moto's EC2, Slurm's answers scripted, job steps counted in
the real /proc (a process really named slurmstepd)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from relion_spot.node import orphan, spot_watcher
from relion_spot.powersave.slurm import CommandResult
from relion_spot.slurm.local import wait_until
from tests.fakes import FakeClock

from ..powersave.conftest import Recorder
from .conftest import FakeImds
from .test_spot_watcher import NOTICE, watcher_env

UNREACHABLE = CommandResult(
    1, "", "slurm_load_node error: Unable to contact slurm controller (connect failure)"
)


@pytest.fixture
def instance(moto_aws: None, imds: FakeImds) -> Iterator[tuple[Any, str]]:
    """A running instance in moto that the metadata server says this node is."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (launched,) = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    imds.metadata["instance-id"] = launched["InstanceId"]
    yield ec2, launched["InstanceId"]


@pytest.fixture
def step_daemon(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A process whose name is slurmstepd, as every job step on a node has."""
    program = tmp_path / orphan.STEP_DAEMON
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    process = subprocess.Popen([str(program), "600"])
    comm = Path("/proc") / str(process.pid) / "comm"
    wait_until(
        lambda: process.poll() is None and comm.read_text().strip() == orphan.STEP_DAEMON,
        timeout=10,
        what=lambda: f"pid {process.pid} named {orphan.STEP_DAEMON} (exit {process.poll()})",
    )
    yield process
    process.kill()
    process.wait()


def _state(ec2: Any, instance_id: str) -> str:
    (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservation["Instances"][0]["State"]["Name"])


def test_an_idle_node_without_a_controller_terminates_its_own_instance(
    imds: FakeImds, tmp_path: Path, instance: tuple[Any, str]
) -> None:
    ec2, instance_id = instance
    recorder = Recorder()
    recorder.replies[("scontrol", "show", "node")] = UNREACHABLE
    clock = FakeClock()
    env = watcher_env(imds, tmp_path, **{orphan.ORPHAN_SECONDS_ENV: "120"})
    # The node's own process table (this host's /proc also shows other containers' job steps).
    proc = tmp_path / "proc"
    for pid, name in ((1, "tini"), (7, "slurmd"), (9, "python3")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(f"{name}\n")
    status = spot_watcher.main(
        [], environ=env, runner=recorder, sleep=clock.sleep, clock=clock, ec2=ec2, proc=proc
    )
    assert status == 0
    assert _state(ec2, instance_id) in ("shutting-down", "terminated")
    # Asked every 30 s from 30 s on; orphaned from the first unanswered check, ended 120 s later.
    assert [c for c in recorder.calls if c[:2] == ["scontrol", "show"]] == [
        ["scontrol", "show", "node", "gpu-3"]
    ] * 5
    assert 150 <= clock.now < 150 + 5


def test_a_node_with_a_job_is_never_ended(
    imds: FakeImds, tmp_path: Path, instance: tuple[Any, str], step_daemon: subprocess.Popen
) -> None:
    ec2, instance_id = instance
    assert orphan.job_steps_here() >= 1
    recorder = Recorder()
    recorder.replies[("scontrol", "show", "node")] = UNREACHABLE
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 1000:  # long past the limit: the watcher is still there for the notice
            imds.notice = NOTICE

    env = watcher_env(imds, tmp_path, **{orphan.ORPHAN_SECONDS_ENV: "120"})
    status = spot_watcher.main([], environ=env, runner=recorder, sleep=sleep, clock=clock, ec2=ec2)
    assert status == 0, "the notice was handled"
    assert _state(ec2, instance_id) == "running"
    assert not [c for c in recorder.calls if c[:2] == ["scontrol", "show"]], "busy: not asked"


def test_the_watch_counts_only_uninterrupted_orphaned_time() -> None:
    watch = orphan.OrphanWatch(limit_seconds=100)
    assert not watch.observe(controller_answers=False, busy=False, now=0)
    assert not watch.observe(controller_answers=False, busy=False, now=90)
    assert not watch.observe(controller_answers=True, busy=False, now=95)  # it came back
    assert not watch.observe(controller_answers=False, busy=False, now=100)
    assert not watch.observe(controller_answers=False, busy=True, now=150)  # a job
    assert not watch.observe(controller_answers=False, busy=False, now=160)
    assert watch.observe(controller_answers=False, busy=False, now=260)


@pytest.mark.parametrize("raw", ["5", "soon", "-1"])
def test_a_bad_orphan_time_is_one_line_and_exit_2(imds: FakeImds, tmp_path: Path, raw: str) -> None:
    env = watcher_env(imds, tmp_path, **{orphan.ORPHAN_SECONDS_ENV: raw})
    assert spot_watcher.main([], environ=env, runner=Recorder()) == 2
    log = (tmp_path / "watcher.log").read_text()
    assert f"{orphan.ORPHAN_SECONDS_ENV} = {raw!r}: expected whole seconds, at least 10" in log
