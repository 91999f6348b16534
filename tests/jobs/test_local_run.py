"""The rendered local-mode script run for real: Debian's RELION on a small synthetic set.

Runs the script with bash as Slurm would (SLURM_JOB_ID set, the #SBATCH lines are comments),
checks the run finishes into the job's own Class3D/jobNNN/ with the pipeline-control marker, that
a second start of the same job (a requeue after the end) exits at once without recomputing, and
that job 1 of a second cluster sharing the project runs its own classification beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relion_spot.jobs import Class3dParams, NodeShape, render
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.relion.synthetic import SyntheticResult, SyntheticSpec, generate

pytestmark = pytest.mark.relion

SPEC = SyntheticSpec(classes=2, particles_per_class=50, snr=1.0, seed=0)
ITERATIONS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticResult:
    missing = [p for p in ("relion_refine", "relion_project") if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs RELION ({', '.join(missing)} not on PATH): scripts/setup-relion.sh")
    return generate(SPEC, tmp_path_factory.mktemp("class3d-local"))


def _run(
    script: Path, job_id: str, *, cluster: str = "lab-gpu1", restarts: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # Open MPI refuses to start as root unless told; the cluster's jobs never run as root.
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_CLUSTER_NAME": cluster,
        "SLURM_RESTART_COUNT": str(restarts),
    }
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _own_dir(dataset: SyntheticResult, cluster: str, job_id: str) -> Path:
    found = find(dataset.out, Owner(cluster=cluster, slurm_job_id=job_id))
    assert found is not None, f"job {job_id} of {cluster} claimed no directory"
    return found.directory


def _params(dataset: SyntheticResult, scratch: Path, threads: int) -> Class3dParams:
    scratch.mkdir()
    return Class3dParams(
        particles=dataset.particles_star.name,
        reference=dataset.reference.name,
        K=SPEC.classes,
        iter=ITERATIONS,
        ini_high=round(2.5 * 2 * SPEC.angpix),
        particle_diameter=SPEC.particle_diameter_angstrom,
        offset_range=2,
        offset_step=1,
        j=threads,
        pool=10,
        project_dir=str(dataset.out),
        scratch_dir=str(scratch),
    )


def test_local_script_runs_relion_to_the_end_and_skips_a_finished_run(
    dataset: SyntheticResult, tmp_path: Path
) -> None:
    params = _params(dataset, tmp_path / "scratch", threads=2)
    script = tmp_path / "class3d.sbatch"
    script.write_text(render(1, params, mode="local"))

    done = _run(script, "1")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_dir = _own_dir(dataset, "lab-gpu1", "1")
    assert (job_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()

    started = time.monotonic()
    again = _run(script, "1", restarts=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"finished: iteration {ITERATIONS} of {ITERATIONS} is complete" in again.stderr
    assert "relion_refine exited" not in again.stderr
    assert time.monotonic() - started < 30

    # Job 1 of another cluster (its own slurmctld, ids from 1) on the same /data: its own
    # directory and its own classification, never "finished" with the first cluster's classes.
    other = _run(script, "1", cluster="lab-gpu4")
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert "relion_refine exited 0" in other.stderr
    other_dir = _own_dir(dataset, "lab-gpu4", "1")
    assert other_dir != job_dir
    assert (other_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()


def test_local_mpi_launch_line_runs_relion_refine_mpi(
    dataset: SyntheticResult, tmp_path: Path
) -> None:
    """The multi-GPU launch line (mpirun -n N+1 with the container's Open MPI settings), run
    with Debian's Open MPI: a leader and two followers, one thread each."""
    params = _params(dataset, tmp_path / "scratch", threads=1)
    script = tmp_path / "class3d.sbatch"
    script.write_text(render(NodeShape(gpus=2, vcpus=2), params, mode="local"))
    done = _run(script, "43")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_dir = _own_dir(dataset, "lab-gpu1", "43")
    assert (job_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert "relion_refine_mpi exited 0" in done.stderr
