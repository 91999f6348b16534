"""The rendered local-mode script run for real where a job runs: in a node container started with
the node bootstrap's Apptainer flags, as the job user, RELION 5 through ``apptainer exec`` of the
SIF in /containers (the project's CPU build of assets/relion).

The script runs with bash as Slurm would (SLURM_JOB_ID set, the #SBATCH lines are comments). The
run must finish into the job's own Class3D/jobNNN/ with the pipeline-control marker; a second
start of the same job (a requeue after the end) must exit at once without recomputing; and job 1
of a second cluster sharing the project must run its own classification beside it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import starfile

from relion_spot.demo.runner import DemoSettings, make_dataset
from relion_spot.jobs import Class3dParams, NodeShape, render
from relion_spot.jobs.class3d import CONTAINER_CACHE
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.relion.synthetic import load_manifest
from relion_spot.slurm.local import APPTAINER_ARGS, LOCAL_NODE_IMAGE
from relion_spot.slurm.local import CONTAINER_CACHE as HOST_CACHE
from tests.slurm.conftest import slurm_images  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker

PARTICLES_PER_CLASS = 50
ITERATIONS = 2


@pytest.fixture(scope="module")
def project(slurm_images: None, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    data = tmp_path_factory.mktemp("class3d-local") / "data"
    settings = DemoSettings(particles_per_class=PARTICLES_PER_CLASS, reclaim_after=0)
    return make_dataset(settings, data)


def _run(
    project: Path, script: str, job_id: str, *, cluster: str = "lab-gpu1", restarts: int = 0
) -> subprocess.CompletedProcess[str]:
    """The script as slurmd runs it on a node: the job user, in the project, on /data."""
    (project / "job.sbatch").write_text(script)
    return subprocess.run(
        [
            "docker", "run", "--rm", *APPTAINER_ARGS,
            "-v", f"{project.parent.resolve()}:/data",
            "-v", f"{HOST_CACHE.resolve()}:{CONTAINER_CACHE}",
            "-e", f"SLURM_JOB_ID={job_id}", "-e", f"SLURM_CLUSTER_NAME={cluster}",
            "-e", f"SLURM_RESTART_COUNT={restarts}",
            "--entrypoint", "bash", LOCAL_NODE_IMAGE, "-c",
            f"chmod 0666 /dev/fuse && cd /data/{project.name} && "
            "exec runuser -u relion -- bash job.sbatch",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip


def _params(project: Path, threads: int) -> Class3dParams:
    manifest = load_manifest(project)
    spec = manifest["spec"]
    return Class3dParams(
        particles=manifest["files"]["particles"],
        reference=manifest["files"]["reference"],
        K=int(spec["classes"]),
        iter=ITERATIONS,
        ini_high=round(2.5 * 2 * float(spec["angpix"])),
        particle_diameter=float(manifest["particle_diameter_angstrom"]),
        offset_range=2,
        offset_step=1,
        j=threads,
        pool=10,
        project_dir=f"/data/{project.name}",
    )


def _own_dir(project: Path, cluster: str, job_id: str) -> Path:
    found = find(project, Owner(cluster=cluster, slurm_job_id=job_id))
    assert found is not None, f"job {job_id} of {cluster} claimed no directory"
    return found.directory


def test_local_script_runs_relion_5_to_the_end_and_skips_a_finished_run(project: Path) -> None:
    script = render(1, _params(project, threads=2), mode="local")

    done = _run(project, script, "1")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "checkpoint: RELION 5.0.1" in done.stderr, done.stderr[-3000:]
    assert "via apptainer exec --bind /data,/scratch /containers/" in done.stderr
    job_dir = _own_dir(project, "lab-gpu1", "1")
    assert (job_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert "Expectation iteration" in (job_dir / "run.out").read_text()
    assert (job_dir / "run.err").is_file()
    assert "relion_refine --o Class3D/job001/run" in (job_dir / "note.txt").read_text()
    processes = starfile.read(project / "default_pipeline.star")["pipeline_processes"]
    entry = processes[processes["rlnPipeLineProcessName"] == f"{job_dir.relative_to(project)}/"]
    assert list(entry["rlnPipeLineProcessTypeLabel"]) == ["relion.class3d"], processes

    started = time.monotonic()
    again = _run(project, script, "1", restarts=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"finished: iteration {ITERATIONS} of {ITERATIONS} is complete" in again.stderr
    assert "relion_refine exited" not in again.stderr
    assert time.monotonic() - started < 180, "the finished run is skipped, not run again"

    # Job 1 of another cluster (its own slurmctld, ids from 1) on the same /data: its own
    # directory and its own classification, never "finished" with the first cluster's classes.
    other = _run(project, script, "1", cluster="lab-gpu4")
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert "relion_refine exited 0" in other.stderr
    other_dir = _own_dir(project, "lab-gpu4", "1")
    assert other_dir != job_dir
    assert (other_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()


def test_local_mpi_launch_line_runs_relion_refine_mpi(project: Path) -> None:
    """The multi-GPU launch line (mpirun -n N+1 with the container-safe Open MPI settings) inside
    the image, as on a GPU node: a leader and two followers, one thread each."""
    script = render(NodeShape(gpus=2, vcpus=2), _params(project, threads=1), mode="local")
    done = _run(project, script, "43")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_dir = _own_dir(project, "lab-gpu1", "43")
    assert (job_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert "relion_refine_mpi exited 0" in done.stderr
