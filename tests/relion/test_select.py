"""The select step of the classify → select → reclassify loop, on the real RELION 5 run: the
program, its refusals, the controller's check, and the job template run as a CPU job runs it,
with RELION itself reading what it wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import starfile

from relion_spot.intake.prepare import JobPreparer, JobRejected
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.jobs.select import SelectParams, render_select
from relion_spot.local.job_container import JOB_UID, RELION_THROUGH_SIF, job_container
from relion_spot.relion import pipeline
from relion_spot.relion.checkpoint import iteration_files
from relion_spot.relion.select import main

from .conftest import CLUSTER, ITERATIONS, SPEC, RunRecord, truncate

pytestmark = pytest.mark.relion


@pytest.fixture
def project(uninterrupted: RunRecord, tmp_path: Path) -> Path:
    """A private copy of the project holding the finished run (the job user's, as on /data)."""
    source = uninterrupted.root.parents[2]
    copy = tmp_path / "data" / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".relion_lock"))
    for path in (tmp_path / "data", *copy.rglob("*"), copy):
        os.chown(path, JOB_UID, JOB_UID)
    return copy


def _run_dir(uninterrupted: RunRecord) -> str:
    return str(uninterrupted.root.parent.relative_to(uninterrupted.root.parents[2]))


def _select(project: Path, *args: str) -> int:
    cwd = Path.cwd()
    os.chdir(project)
    try:
        return main(list(args))
    finally:
        os.chdir(cwd)


def test_the_chosen_class_is_written_as_relion_s_select_job_writes_it(
    project: Path, uninterrupted: RunRecord, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(uninterrupted)
    assert _select(project, "--run", run, "--classes", "1", "--out", "Select/job009") == 0
    written = project / "Select/job009/particles.star"
    blocks = starfile.read(written, always_dict=True)
    source = starfile.read(
        iteration_files(project / run / "run", ITERATIONS, SPEC.classes)["data"], always_dict=True
    )
    expected = source["particles"][source["particles"]["rlnClassNumber"] == 1]
    assert list(blocks["particles"]["rlnImageName"]) == list(expected["rlnImageName"])
    assert 0 < len(expected) < SPEC.particles
    assert list(blocks["optics"]["rlnOpticsGroup"]) == [1]
    assert written.read_text().startswith("# version 50001\n")
    assert (project / "Select/job009/RELION_JOB_EXIT_SUCCESS").is_file()
    out = capsys.readouterr().out
    assert (
        f"select: {len(expected)} particles (class 1: {len(expected)}) of {run} iteration " in out
    )
    entries = starfile.read(project / pipeline.PIPELINE, always_dict=True)
    processes = entries["pipeline_processes"]
    row = processes[processes["rlnPipeLineProcessName"] == "Select/job009/"]
    assert list(row["rlnPipeLineProcessTypeLabel"]) == ["relion.select.interactive"]
    edges = entries["pipeline_input_edges"]
    assert f"{run}/run_it{ITERATIONS:03d}_optimiser.star" in set(
        edges[edges["rlnPipeLineEdgeProcess"] == "Select/job009/"]["rlnPipeLineEdgeFromNode"]
    )
    before = written.stat().st_mtime_ns
    assert _select(project, "--run", run, "--classes", "1", "--out", "Select/job009") == 0
    assert written.stat().st_mtime_ns == before, "a requeued selection rewrote its output"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "3"], "classes 3 are not valid: class numbers of run {run!r}, from 1 to "
         "its K=2"),
        (["--classes", "1", "--iteration", "99"], "iteration 99 of run {run!r} is not complete: "
         "iteration 99 was not written (its newest written iteration is 10)"),
        (["--classes", "one"], "classes 'one' are not valid: class numbers separated by commas, "
         "e.g. 1,3"),
    ],
)  # fmt: skip
def test_a_selection_that_cannot_be_made_is_one_line_and_writes_nothing(
    project: Path,
    uninterrupted: RunRecord,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    run = _run_dir(uninterrupted)
    assert _select(project, "--run", run, *args, "--out", "Select/job009") == 2
    err = capsys.readouterr().err
    assert err == f"select: {message.format(run=run)}\n"
    assert not (project / "Select").exists()


def test_an_unfinished_newest_iteration_selects_from_the_one_before(
    project: Path, uninterrupted: RunRecord, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(uninterrupted)
    truncate(iteration_files(project / run / "run", ITERATIONS, SPEC.classes)["data"])
    assert _select(project, "--run", run, "--classes", "2", "--out", "Select/job009") == 0
    assert f"of {run} iteration {ITERATIONS - 1} (K=2)" in capsys.readouterr().out


def test_the_controller_refuses_a_selection_the_run_cannot_give_before_any_node(
    project: Path, uninterrupted: RunRecord
) -> None:
    run = _run_dir(uninterrupted)
    prepare = JobPreparer(instance_types=("g5.xlarge",), data_root=project.parent)
    at = f"/data/{project.name}"
    accepted = prepare(SelectParams(at, run, (2,)))
    assert accepted.note == (
        f"preflight ok: classes 2 of {run} (K=2) at iteration {ITERATIONS}, on the CPU partition"
    )
    assert not accepted.needs_image
    with pytest.raises(JobRejected, match=r"^preflight: classes 1,3 are not valid: .* K=2$"):
        prepare(SelectParams(at, run, (1, 3)))
    with pytest.raises(JobRejected, match=r"^preflight: run 'Class3D/job999' has no iteration in"):
        prepare(SelectParams(at, "Class3D/job999", (1,)))


def test_the_select_job_runs_on_a_node_and_relion_reads_its_particles(
    project: Path, uninterrupted: RunRecord
) -> None:
    """The rendered script run with bash as slurmd would, as the job user in a node container;
    then relion_star_handler, from the jobs' SIF, reads the selection."""
    run = _run_dir(uninterrupted)
    script = render_select(SelectParams(f"/data/{project.name}", run, (1,)))
    (project / "select.sbatch").write_text(script)
    env = {"SLURM_JOB_ID": "7001", "SLURM_CLUSTER_NAME": CLUSTER, "SLURM_RESTART_COUNT": "0"}
    argv = job_container(data_dir=project.parent, workdir=f"/data/{project.name}", env=env)
    done = subprocess.run(
        [*argv, "bash", "select.sbatch"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    claim = find(project, Owner(cluster=CLUSTER, slurm_job_id="7001"))
    assert claim is not None and claim.directory.parent.name == "Select"
    selected = claim.directory.relative_to(project) / "particles.star"
    assert (project / selected).stat().st_uid == JOB_UID
    check = (
        f'{RELION_THROUGH_SIF} && apptainer exec --bind /data "$SIF" relion_star_handler '
        f"--i {selected} --o /tmp/read.star --select rlnClassNumber --minval 1 --maxval 1"
    )
    read = subprocess.run(
        [*argv, "bash", "-c", check], capture_output=True, text=True, timeout=300, check=False
    )
    count = len(starfile.read(project / selected, always_dict=True)["particles"])
    assert read.returncode == 0, read.stdout + read.stderr
    assert f"with {count} item(s)" in read.stdout
