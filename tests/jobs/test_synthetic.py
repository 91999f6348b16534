"""The synthetic-set job's script and parameters: CPU partition, the cluster's RELION image,
requeueable, checked values, and the controller's refusal of a project that holds a lab's data."""

from __future__ import annotations

import difflib
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from relion_spot.intake.message import InvalidSubmission, new_submission, parse
from relion_spot.intake.prepare import JobPreparer, JobRejected
from relion_spot.jobs.class3d import DEFAULT_IMAGE, LOCAL_IMAGE
from relion_spot.jobs.parameters import JobParameterError
from relion_spot.jobs.synthetic import (
    SyntheticParams,
    class3d_parameters,
    render_synthetic,
    synthetic_from_mapping,
)
from relion_spot.relion.synthetic import MANIFEST, SyntheticSpec

from .test_class3d import _golden

GIVEN = SyntheticParams(project_dir="/data/try", classes=3, particles_per_class=50, seed=7)


@pytest.mark.parametrize("mode", ["cloud", "local"])
def test_the_script_matches_golden_and_is_clean_shell(mode: str) -> None:
    script = render_synthetic(GIVEN, mode=mode)  # type: ignore[arg-type]
    _golden(f"synthetic-{mode}.sbatch", script)
    assert "$$" not in script
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout


def test_cloud_and_local_scripts_differ_only_in_the_image() -> None:
    cloud = render_synthetic(GIVEN).splitlines()
    local = render_synthetic(GIVEN, mode="local").splitlines()
    diff = [d for d in difflib.ndiff(cloud, local) if d[:2] in ("- ", "+ ")]
    assert diff == [f"- IMAGE={DEFAULT_IMAGE}", f"+ IMAGE={LOCAL_IMAGE}"]
    own = render_synthetic(GIVEN, image="docker://lab/relion:5")
    assert "IMAGE=docker://lab/relion:5" in own


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "a synthetic set needs project_dir"),
        ({"project_dir": "/etc"}, "parameter project_dir = '/etc' is not valid"),
        ({"project_dir": "/data/.relion-spot"}, "are the cluster's own"),
        ({"project_dir": "/data/x", "classes": 0}, "parameter classes=0: must be between 1 and 50"),
        ({"project_dir": "/data/x", "classes": "two"}, "parameter classes = 'two' is not valid"),
        ({"project_dir": "/data/x", "particles_per_class": True}, "particles_per_class = 'True'"),
        ({"project_dir": "/data/x", "particles_per_class": 20001}, "at most 20000 particles"),
        ({"project_dir": "/data/x", "seed": 2**40}, "seed below 2^32"),
        ({"project_dir": "/data/x", "K": 2}, "parameter 'K' is not known for a synthetic set"),
    ],
)
def test_bad_values_are_one_clear_message(values: dict, message: str) -> None:
    with pytest.raises(JobParameterError) as refused:
        synthetic_from_mapping(values)
    assert message in str(refused.value)


def test_a_set_travels_the_intake_queue_and_a_bad_one_is_refused_by_the_same_check() -> None:
    sent = new_submission(asdict(GIVEN), user="alice", template="synthetic")
    assert parse(sent.to_json()).params == GIVEN
    with pytest.raises(InvalidSubmission, match="parameter classes"):
        new_submission({"project_dir": "/data/x", "classes": 99}, user="a", template="synthetic")


def test_the_class3d_of_a_set_is_the_benchmarks_flags_scaled_to_its_box() -> None:
    spec = GIVEN.spec
    assert class3d_parameters(GIVEN, 6) == {
        "project_dir": "/data/try", "particles": "particles.star", "reference": "reference.mrc",
        "K": 3, "iter": 6, "ini_high": 20, "particle_diameter": spec.particle_diameter_angstrom,
        "offset_range": 2, "offset_step": 1, "j": 2, "pool": 10,
    }  # fmt: skip


def test_the_controller_refuses_a_project_holding_other_files_and_finds_a_made_set(
    tmp_path: Path,
) -> None:
    preparer = JobPreparer(instance_types=("g5.xlarge",), data_root=tmp_path)
    prepared = preparer(GIVEN)
    assert prepared.needs_image  # the set is made with the cluster's RELION image
    assert "#SBATCH --partition=cpu" in prepared.script
    assert prepared.note.startswith("3 classes x 50 particles (box 40, 4 Å/px, seed 7) into")

    (tmp_path / "try").mkdir()
    assert preparer(GIVEN).note == prepared.note  # an empty project is as good as a new one
    (tmp_path / "try" / MANIFEST).write_text(json.dumps({"spec": asdict(GIVEN.spec)}))
    assert preparer(GIVEN).note.endswith("it is there already, the job finds it and ends")

    other = SyntheticSpec(classes=2, particles_per_class=50, seed=7)
    (tmp_path / "try" / MANIFEST).write_text(json.dumps({"spec": asdict(other)}))
    with pytest.raises(JobRejected) as refused:
        preparer(GIVEN)
    assert str(refused.value) == (
        "parameter project_dir = '/data/try' is not valid: it already holds other files; a "
        "synthetic set is made only in a new or empty project"
    )


@pytest.mark.parametrize("planted", ["fifo", "link-to-dev-zero", "huge"])
def test_a_planted_manifest_neither_hangs_nor_crashes_the_controller(
    tmp_path: Path, planted: str
) -> None:
    """The controller reads the manifest of a directory jobs write, as root: a FIFO (a read
    would block forever), a link to /dev/zero (a read would never end) or an oversized file is
    not a manifest, and the project is refused as one holding other files."""
    import os

    project = tmp_path / "try"
    project.mkdir()
    manifest = project / MANIFEST
    if planted == "fifo":
        os.mkfifo(manifest)
    elif planted == "link-to-dev-zero":
        manifest.symlink_to("/dev/zero")
    else:
        manifest.write_text(json.dumps({"spec": asdict(GIVEN.spec), "pad": "x" * 100_000}))
    preparer = JobPreparer(instance_types=("g5.xlarge",), data_root=tmp_path)
    with pytest.raises(JobRejected, match="it already holds other files"):
        preparer(GIVEN)
