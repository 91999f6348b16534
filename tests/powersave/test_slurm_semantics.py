"""The command lines ``Slurm`` produces do what the programs rely on, in real Slurm 24.11.

A controller container and one node container of the project's image; ``Slurm`` runs its
commands through ``docker exec`` - in the controller as SlurmUser for the power-save programs,
in the node container as root for the spot watcher (configless, through slurmd's sack socket).
No instance is launched: the controller's ResumeProgram finds no EC2 settings and launches
nothing, which leaves a resumed node POWERING_UP exactly as a failed launch would.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from relion_spot.powersave.slurm import CommandResult, Slurm
from relion_spot.settings import Settings
from relion_spot.slurm.local import (
    LocalSlurm,
    sbatch,
    wait_until,
)
from relion_spot.slurm.spec import LOCAL_CLOUD, spec_from_settings
from tests.slurm.conftest import controller_only, slurm_images  # noqa: F401  (fixture)
from tests.slurm.show import scontrol_fields

pytestmark = pytest.mark.docker


def in_container(container: str, user: str) -> Callable[[Sequence[str]], CommandResult]:
    def run(argv: Sequence[str]) -> CommandResult:
        done = subprocess.run(
            ["docker", "exec", "-u", user, container, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return CommandResult(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture(scope="module")
def cluster(
    slurm_images: None,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalSlurm]:
    spec = spec_from_settings(
        Settings(gpus=(1,)),
        1,
        suspend_timeout=2,
        # Long enough for the failed-launch test's five docker exec calls on a busy machine to
        # come before Slurm's own timeout; the timed-out-node test waits it out.
        resume_timeout=25,
        slurmd_timeout=30,
        **LOCAL_CLOUD,
    )
    with controller_only(tmp_path_factory.mktemp("semantics"), "semantics", spec) as local:
        yield local


def node(local: LocalSlurm, name: str) -> dict[str, str]:
    return scontrol_fields(local.run("scontrol", "show", "node", name))


def job(local: LocalSlurm, job_id: int) -> dict[str, str]:
    return scontrol_fields(local.run("scontrol", "show", "job", str(job_id)))


def wait_state(local: LocalSlurm, name: str, *flags: str, timeout: float = 60) -> dict[str, str]:
    def reached() -> dict[str, str] | None:
        fields = node(local, name)
        state = fields.get("State", "").split("+")
        return fields if all(f in state for f in flags) else None

    found = wait_until(
        reached, timeout=timeout, what=lambda: f"{name} {flags}: {node(local, name)}"
    )
    assert isinstance(found, dict)
    return found


def test_failed_launch_requeues_the_job_and_frees_the_node_name(cluster: LocalSlurm) -> None:
    slurm = Slurm(runner=in_container(cluster.controller, "slurm"))
    job_id = sbatch(cluster, ["-p", "gpu", "-w", "gpu-1", "--wrap", "sleep 300"])
    wait_state(cluster, "gpu-1", "POWERING_UP")

    assert slurm.record_instance("gpu-1", "i-0123456789abcdef0", "g5.xlarge")
    fields = node(cluster, "gpu-1")
    assert (fields["InstanceId"], fields["InstanceType"]) == ("i-0123456789abcdef0", "g5.xlarge")

    assert slurm.fail_launch(["gpu-1"], "EC2 InsufficientInstanceCapacity (g5.xlarge): none")
    # COMPLETING while the node's epilog runs (it meters the job's I/O), then back in the queue.
    wait_until(
        lambda: job(cluster, job_id)["JobState"] == "PENDING",
        timeout=60,
        what=lambda: f"job {job_id} requeued: {job(cluster, job_id)}",
    )
    record = job(cluster, job_id)
    assert record["Restarts"] == "1", record
    assert "Reason=EC2 InsufficientInstanceCapacity" in cluster.run(
        "scontrol", "show", "node", "gpu-1"
    )
    freed = wait_state(cluster, "gpu-1", "IDLE", "POWERED_DOWN", timeout=40)
    assert "POWERING_UP" not in freed["State"]
    assert "InstanceId" not in freed or freed["InstanceId"] in ("", "(null)")
    cluster.run("scancel", str(job_id))


def test_resume_fail_commands_bring_a_timed_out_node_back(cluster: LocalSlurm) -> None:
    slurm = Slurm(runner=in_container(cluster.controller, "slurm"))
    job_id = sbatch(cluster, ["-p", "gpu", "-w", "gpu-2", "--wrap", "sleep 300"])
    timed_out = wait_state(cluster, "gpu-2", "DOWN", "POWERED_DOWN", timeout=120)
    assert timed_out["Reason"] == "ResumeTimeout"  # "ResumeTimeout reached", split at spaces

    assert slurm.reset_addresses(["gpu-2"])
    assert slurm.power_down_force(["gpu-2"], "no slurmd registration within ResumeTimeout")
    back = wait_state(cluster, "gpu-2", "IDLE", "POWERED_DOWN", timeout=40)
    assert (back["NodeAddr"], back["NodeHostName"]) == ("gpu-2", "gpu-2")
    assert job(cluster, job_id)["Restarts"] == "1"
    cluster.run("scancel", str(job_id))


def test_watcher_commands_from_the_node_requeue_its_job_and_power_it_down(
    cluster: LocalSlurm,
) -> None:
    container = cluster.start_node("gpu-3", placeholder_gpus=1)
    wait_state(cluster, "gpu-3", "IDLE", timeout=90)
    job_id = sbatch(cluster, ["-p", "gpu", "-w", "gpu-3", "--wrap", "sleep 300"])
    wait_until(lambda: job(cluster, job_id)["JobState"] == "RUNNING", timeout=60, what="running")
    slurm = Slurm(runner=in_container(container, "root"))
    started = time.monotonic()

    assert slurm.drain("gpu-3", "spot reclaim")
    assert slurm.jobs_on("gpu-3") == [str(job_id)]
    assert slurm.requeue([str(job_id)])
    assert slurm.power_down_asap("gpu-3", "spot reclaim")
    assert time.monotonic() - started < 60, "well within the two-minute notice"

    # COMPLETING while the node's epilog runs (it meters the job's I/O), then back in the queue.
    wait_until(
        lambda: job(cluster, job_id)["JobState"] == "PENDING",
        timeout=60,
        what=lambda: f"job {job_id} requeued: {job(cluster, job_id)}",
    )
    record = job(cluster, job_id)
    assert record["Restarts"] == "1", record
    gone = wait_state(cluster, "gpu-3", "POWERED_DOWN", timeout=60)
    assert gone["NodeAddr"] == "gpu-3", "Slurm forgets the reclaimed instance's address"
    cluster.run("scancel", str(job_id))


def test_a_command_slurm_refuses_is_reported_not_raised(cluster: LocalSlurm) -> None:
    slurm = Slurm(runner=in_container(cluster.controller, "slurm"))
    assert slurm.update_nodes(["gpu-99"], ("state", "drain"), ("reason", "x")) is False
