"""The ground-truthed data set: what it contains, that it is blind, and that a seed fixes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from relion_spot.local.job_container import make_synthetic
from relion_spot.relion.synthetic import SyntheticResult, SyntheticSpec, load_result

from .conftest import SPEC

pytestmark = pytest.mark.relion


def test_files_and_truth(dataset: SyntheticResult) -> None:
    blocks = starfile.read(dataset.particles_star, always_dict=True)
    particles = blocks["particles"]
    assert float(blocks["optics"]["rlnImagePixelSize"].iloc[0]) == SPEC.angpix
    assert len(particles) == SPEC.particles
    # Nothing a classification should have to find out is given away.
    hidden = {"rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"}
    assert not hidden & set(particles.columns)
    assert particles["rlnMicrographName"].nunique() == SPEC.micrographs

    truth = starfile.read(dataset.truth, always_dict=True)["particles"]
    assert truth["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
    assert truth["rlnClassNumber"].value_counts().to_dict() == {
        k: SPEC.particles_per_class for k in range(1, SPEC.classes + 1)
    }
    # Classes are interleaved, not in blocks a lucky split would recover.
    assert truth["rlnClassNumber"].iloc[: SPEC.particles // 2].nunique() == SPEC.classes

    with mrcfile.open(dataset.out / "particles.mrcs") as mrc:
        assert mrc.data.shape == (SPEC.particles, SPEC.box, SPEC.box)
        stack = np.asarray(mrc.data)
    with mrcfile.open(dataset.reference) as mrc:
        assert mrc.data.shape == (SPEC.box,) * 3
        assert float(mrc.voxel_size.x) == pytest.approx(SPEC.angpix)
    # relion_preprocess --norm: background (outside the particle) has mean 0 and sd 1.
    axis = np.arange(SPEC.box) - SPEC.box // 2
    radius = SPEC.particle_diameter_angstrom / SPEC.angpix / 2
    background = stack[:, (axis[:, None] ** 2 + axis[None, :] ** 2) > radius**2]
    assert abs(background.mean()) < 0.05
    assert background.std() == pytest.approx(1, abs=0.05)


def test_classes_differ_by_one_lobe(dataset: SyntheticResult) -> None:
    first, second = (mrcfile.read(p) for p in dataset.volumes)
    difference = np.abs(first - second)
    # Same core in both: most of the mass is shared, a clear part is not.
    assert 0.1 < difference.sum() / first.sum() < 0.8


def test_noise_gives_the_requested_snr(dataset: SyntheticResult) -> None:
    manifest = json.loads((dataset.out / "synthetic.json").read_text())
    assert manifest["signal_variance"] / manifest["noise_sigma"] ** 2 == pytest.approx(SPEC.snr)
    assert manifest["particle_diameter_angstrom"] == SPEC.particle_diameter_angstrom


def test_same_seed_same_data_other_seed_other_data(
    dataset: SyntheticResult, tmp_path: Path
) -> None:
    again = load_result(make_synthetic(SPEC, tmp_path, "again"))
    other = load_result(
        make_synthetic(SyntheticSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}), tmp_path, "o")
    )
    original = mrcfile.read(dataset.out / "particles.mrcs")
    assert np.array_equal(mrcfile.read(again.out / "particles.mrcs"), original)
    assert np.array_equal(mrcfile.read(again.reference), mrcfile.read(dataset.reference))
    assert again.truth.read_text().split("\n", 1)[1] == dataset.truth.read_text().split("\n", 1)[1]
    assert not np.array_equal(mrcfile.read(other.out / "particles.mrcs"), original)


def test_cli_refuses_bad_values_and_busy_folders(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relion_spot.relion.synthetic", "--out", str(tmp_path), *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    done = cli("--classes", "0", "--box", "41")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "classes=0: must be between 1 and 50" in done.stderr
    assert "box=41: must be an even number of pixels from 32 to 256" in done.stderr
    (tmp_path / "keep.txt").write_text("user data")
    done = cli()
    assert done.returncode == 2
    assert f"{tmp_path} is not empty" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"


def _synthetic_job(data: Path, job: str, project: str = "made") -> subprocess.CompletedProcess[str]:
    """The rendered local-mode synthetic template, run as the job user in a node container with
    Slurm's job variables (as slurmd runs it on a CPU node)."""
    from relion_spot.jobs.synthetic import SyntheticParams, render_synthetic
    from relion_spot.local.job_container import job_container

    made = SyntheticParams(project_dir=f"/data/{project}", classes=2, particles_per_class=10)
    (data / "synthetic.sbatch").write_text(render_synthetic(made, mode="local"))
    argv = job_container(data_dir=data, env={"SLURM_JOB_ID": job, "SLURM_RESTART_COUNT": "0"})
    return subprocess.run(
        [*argv, "bash", "/data/synthetic.sbatch"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_the_synthetic_job_makes_a_set_a_requeue_keeps_and_a_lab_project_refuses(
    tmp_path: Path, slurm_images: None
) -> None:
    from relion_spot.relion.synthetic import PARTIAL_PREFIX, made_with

    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    # A requeued attempt finds its own cut-short work area and starts it again.
    leftover = data / "made" / f"{PARTIAL_PREFIX}7"
    leftover.mkdir(parents=True)
    (leftover / "particles.mrcs").write_bytes(b"cut short")
    (leftover.parent / ".synthetic-claim").write_text("7\n")  # the first attempt's claim
    (leftover.parent / "particles.star").write_text("moved up by the first attempt")
    for path in (leftover.parent, leftover, *leftover.parent.iterdir()):
        shutil.chown(path, 1000, 1000)
    first = _synthetic_job(data, "7")
    assert first.returncode == 0, first.stdout + first.stderr
    spec = SyntheticSpec(classes=2, particles_per_class=10)
    project = data / "made"
    assert made_with(project, spec)
    assert sorted(p.name for p in project.iterdir()) == [
        "particles.mrcs", "particles.star", "reference.mrc", "synthetic.json", "synthetic.log",
        "truth.star", "volumes",
    ]  # fmt: skip
    made = load_result(project)
    assert len(starfile.read(made.particles_star, always_dict=True)["particles"]) == 20
    stamp = (project / "particles.mrcs").stat().st_mtime_ns

    again = _synthetic_job(data, "7")  # a requeue of the finished job
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already holds this set" in again.stdout
    assert (project / "particles.mrcs").stat().st_mtime_ns == stamp

    lab = data / "lab"
    lab.mkdir()
    (lab / "particles.star").write_text("the lab's own")
    shutil.chown(lab, 1000, 1000)
    refused = _synthetic_job(data, "8", project="lab")
    assert refused.returncode == 2
    assert "already holds particles.star: a synthetic set is made only in a new or empty" in (
        refused.stderr
    )
    assert [p.name for p in lab.iterdir()] == ["particles.star"]
    assert (lab / "particles.star").read_text() == "the lab's own"

    busy = data / "busy"
    busy.mkdir()
    (busy / ".synthetic-claim").write_text("5\n")  # another job makes a set there now
    shutil.chown(busy, 1000, 1000)
    refused = _synthetic_job(data, "9", project="busy")
    assert refused.returncode == 2
    assert "busy is being made by job 5: one synthetic set per project" in refused.stderr
    assert [p.name for p in busy.iterdir()] == [".synthetic-claim"]


def test_a_synthetic_job_whose_image_fails_reports_failed_as_its_last_word(
    tmp_path: Path, slurm_images: None
) -> None:
    """The step before the program (the image as a SIF) failing is the job's end too: the
    template's trap reports FAILED into the node's spool, as the program's wrapper would."""
    from relion_spot.jobs.synthetic import SyntheticParams, render_synthetic
    from relion_spot.local.job_container import job_container

    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    os.chown(data, 1000, 1000)
    os.chown(data / "spool", 1000, 1000)
    made = SyntheticParams(project_dir="/data/made", classes=2, particles_per_class=10)
    script = render_synthetic(made, mode="local", image="docker-archive:/containers/absent.tar")
    (data / "synthetic.sbatch").write_text(script)
    env = {
        "SLURM_JOB_ID": "9",
        "SLURM_RESTART_COUNT": "0",
        "RELION_SPOT_SUBMISSION_ID": "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b",
        "RELION_SPOT_REPORT_SPOOL": "/data/spool",
    }
    done = subprocess.run(
        [*job_container(data_dir=data, env=env), "bash", "/data/synthetic.sbatch"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    report = json.loads((data / "spool" / "9.json").read_text())
    assert report["progress"]["state"] == "FAILED"
    assert not (data / "made").exists()
