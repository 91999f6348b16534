"""Real RELION 5 on a generated ground-truthed data set, run as a cluster's job runs it.

The data set is made in a node container (RELION through the jobs' SIF, as the demo makes it);
each classification is the rendered local-mode job template run with bash in a node container as
the job user, with Slurm's job variables — job directory claim, image check, checkpoint wrapper,
progress watcher, then ``apptainer exec ... relion_refine`` — and a reclaim is ``docker kill`` of
that container, its requeue the same job started again with SLURM_RESTART_COUNT raised. The data
set and the two runs (one uninterrupted, one killed twice and resumed) are made once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relion_spot.jobs import Class3dParams, NodeShape, render
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.local.job_container import job_container, make_synthetic
from relion_spot.relion.checkpoint import CheckpointError, check_iteration, iteration_files
from relion_spot.relion.synthetic import SyntheticResult, SyntheticSpec, load_result
from tests.slurm.conftest import slurm_images

__all__ = ["slurm_images"]

SPEC = SyntheticSpec(classes=2, particles_per_class=100, snr=1.0, seed=0)
ITERATIONS = 10
FIRST_KILL_AFTER = 3
SECOND_KILL_AFTER = 6
RUN_TIMEOUT_S = 900
CLUSTER = "relion-tests"
PROJECT = "classify"
UNINTERRUPTED_JOB = "101"
RESUMED_JOB = "102"


def params(project: str = PROJECT) -> Class3dParams:
    """The benchmark's flags, scaled to the small box (healpix 2, offsets 2 px in 1 px steps),
    as the demo submits them."""
    return Class3dParams(
        particles="particles.star", reference="reference.mrc", K=SPEC.classes, iter=ITERATIONS,
        ini_high=round(2.5 * 2 * SPEC.angpix),
        particle_diameter=SPEC.particle_diameter_angstrom, offset_range=2, offset_step=1,
        j=2, pool=10, project_dir=f"/data/{project}",
    )  # fmt: skip


@dataclass
class RunRecord:
    job: str
    root: Path
    wall_seconds: float = 0.0
    logs: list[str] = field(default_factory=list)
    kills: list[int] = field(default_factory=list)
    """Iterations complete when the job's container was killed."""

    @property
    def relative_root(self) -> str:
        """The run's --o as the job gives it, relative to the project."""
        return str(self.root.relative_to(self.root.parents[2]))


@dataclass
class Attempt:
    """One start of the job; its output goes to a file (a pipe could fill and stall RELION)."""

    process: subprocess.Popen[bytes]
    name: str
    log: Path

    def output(self) -> str:
        self.process.wait(timeout=120)
        return self.log.read_text(errors="replace")


def start_job(
    project: Path,
    job: str,
    restart: int,
    log: Path,
    *,
    script: str = "class3d.sbatch",
    env: dict[str, str] | None = None,
) -> Attempt:
    """The job template ``script`` (in the project) for ``job`` (attempt ``restart``) in a fresh
    node container; ``env``: more of the job's variables (e.g. its submission id)."""
    name = f"relion-spot-relion-test-{os.getpid()}-{job}-{restart}"
    argv = job_container(
        data_dir=project.parent, name=name, workdir=f"/data/{project.name}",
        env={"SLURM_JOB_ID": job, "SLURM_CLUSTER_NAME": CLUSTER,
             "SLURM_RESTART_COUNT": str(restart), **(env or {})},
    )  # fmt: skip
    with log.open("wb") as handle:
        process = subprocess.Popen([*argv, "bash", script], stdout=handle, stderr=subprocess.STDOUT)
    return Attempt(process, name, log)


def claimed_root(project: Path, job: str, attempt: Attempt) -> Path:
    """The run root in the directory the job claimed (waits for the claim)."""
    deadline = time.monotonic() + 300
    while (claim := find(project, Owner(cluster=CLUSTER, slurm_job_id=job))) is None:
        if attempt.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"job {job} claimed no directory:\n{attempt.output()}")
        time.sleep(0.2)
    return claim.directory / "run"


def kill_when_complete(attempt: Attempt, root: Path, iteration: int) -> int:
    """``docker kill`` the job's container (a reclaimed node takes the job with it) once
    ``iteration`` is complete; the newest complete iteration at the kill (on a loaded machine
    RELION may have finished one more before the poll saw it)."""
    files = list(iteration_files(root, iteration, SPEC.classes).values())
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if attempt.process.poll() is not None:
            raise AssertionError(f"run ended before iteration {iteration}:\n{attempt.output()}")
        if all(path.is_file() for path in files):
            try:
                check_iteration(root, iteration, SPEC.classes)
            except CheckpointError:
                pass
            else:
                subprocess.run(["docker", "kill", attempt.name], capture_output=True, check=True)
                attempt.process.wait(timeout=120)
                newest = iteration
                while True:
                    try:
                        check_iteration(root, newest + 1, SPEC.classes)
                    except CheckpointError:
                        return newest
                    newest += 1
        time.sleep(0.1)
    subprocess.run(["docker", "kill", attempt.name], capture_output=True, check=False)
    raise AssertionError(f"iteration {iteration} not complete after {RUN_TIMEOUT_S} s")


def run_to_end(
    project: Path,
    job: str,
    restart: int,
    log: Path,
    *,
    script: str = "class3d.sbatch",
    env: dict[str, str] | None = None,
) -> str:
    attempt = start_job(project, job, restart, log, script=script, env=env)
    try:
        code = attempt.process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        subprocess.run(["docker", "kill", attempt.name], capture_output=True, check=False)
    output = attempt.output()
    assert code == 0, output[-3000:]
    return output


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory, slurm_images: None) -> SyntheticResult:
    data = tmp_path_factory.mktemp("data")
    project = make_synthetic(SPEC, data, PROJECT)
    (project / "class3d.sbatch").write_text(
        render(NodeShape.for_gpu_count(1), params(), mode="local")
    )
    return load_result(project)


@pytest.fixture(scope="session")
def uninterrupted(dataset: SyntheticResult) -> RunRecord:
    logs = dataset.out.parent / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    output = run_to_end(dataset.out, UNINTERRUPTED_JOB, 0, logs / "uninterrupted.log")
    claim = find(dataset.out, Owner(cluster=CLUSTER, slurm_job_id=UNINTERRUPTED_JOB))
    assert claim is not None, output[-3000:]
    return RunRecord(
        job=UNINTERRUPTED_JOB, root=claim.directory / "run",
        wall_seconds=time.monotonic() - started, logs=[output],
    )  # fmt: skip


@pytest.fixture(scope="session")
def resumed(dataset: SyntheticResult, uninterrupted: RunRecord) -> RunRecord:
    """Killed after iteration 3 and resumed; killed after 6 with 6's map cut short; resumed
    (``kills`` holds the iterations actually complete at each kill)."""
    logs = dataset.out.parent / "logs"
    started = time.monotonic()
    first = start_job(dataset.out, RESUMED_JOB, 0, logs / "resumed-0.log")
    root = claimed_root(dataset.out, RESUMED_JOB, first)
    record = RunRecord(job=RESUMED_JOB, root=root)
    record.kills.append(kill_when_complete(first, root, FIRST_KILL_AFTER))
    record.logs.append(first.output())

    second = start_job(dataset.out, RESUMED_JOB, 1, logs / "resumed-1.log")
    killed = kill_when_complete(second, root, SECOND_KILL_AFTER)
    record.kills.append(killed)
    record.logs.append(second.output())
    truncate(Path(f"{root}_it{killed:03d}_class002.mrc"))

    record.logs.append(run_to_end(dataset.out, RESUMED_JOB, 2, logs / "resumed-2.log"))
    record.wall_seconds = time.monotonic() - started
    return record


def truncate(path: Path, keep: float = 0.6) -> None:
    """What a reclaim in the middle of RELION's write leaves behind."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(int(size * keep))


@pytest.fixture
def copy_run(tmp_path: Path) -> Callable[[RunRecord], Path]:
    """A private copy of a finished run's folder, to damage without touching the shared one."""

    def copy(record: RunRecord) -> Path:
        target = tmp_path / record.root.parent.name
        shutil.copytree(record.root.parent, target)
        return target / record.root.name

    return copy
