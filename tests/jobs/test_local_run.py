"""The rendered local-mode script run for real: Debian's RELION on a small synthetic set.

Runs the script with bash as Slurm would (SLURM_JOB_ID set, the #SBATCH lines are comments),
checks the run finishes into Class3D/job<id>/ with the pipeline-control marker, and that a
second start of the same job (a requeue after the end) exits at once without recomputing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relion_spot.jobs import Class3dParams, render
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


def _run(script: Path, job_id: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
    }
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_local_script_runs_relion_to_the_end_and_skips_a_finished_run(
    dataset: SyntheticResult, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    params = Class3dParams(
        particles=dataset.particles_star.name,
        reference=dataset.reference.name,
        K=SPEC.classes,
        iter=ITERATIONS,
        ini_high=round(2.5 * 2 * SPEC.angpix),
        particle_diameter=SPEC.particle_diameter_angstrom,
        offset_range=2,
        offset_step=1,
        j=2,
        pool=10,
        project_dir=str(dataset.out),
        scratch_dir=str(scratch),
    )
    script = tmp_path / "class3d.sbatch"
    script.write_text(render(1, params, mode="local"))

    done = _run(script, "42")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_dir = dataset.out / "Class3D" / "job42"
    assert (job_dir / f"run_it{ITERATIONS:03d}_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()

    started = time.monotonic()
    again = _run(script, "42")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"finished: iteration {ITERATIONS} of {ITERATIONS} is complete" in again.stderr
    assert "relion_refine exited" not in again.stderr
    assert time.monotonic() - started < 30
