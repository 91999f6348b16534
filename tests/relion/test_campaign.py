"""A campaign's later steps with real RELION 5, run as the cluster runs them: the rendered
local-mode Refine3D and PostProcess scripts in node containers as the job user, after a Class3D
claimed by its submission. The refinement is reclaimed (``docker kill``) mid-way and requeued;
it continues from its newest complete iteration of both halves, converges, and the PostProcess's
map is measured against the true volume."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relion_spot.jobs.campaign import RefineStep, render_postprocess, render_refine
from relion_spot.jobs.class3d import NodeShape
from relion_spot.jobs.job_dir import CLAIM_FILE, Owner, find
from relion_spot.relion import pipeline
from relion_spot.relion.campaign import PICK_FILE, RESULT_FILE, Pick
from relion_spot.relion.checkpoint import (
    CheckpointError,
    check_iteration,
    has_finished,
    read_history,
)
from relion_spot.relion.progress import collect
from relion_spot.relion.synthetic import SyntheticResult

from .conftest import RUN_TIMEOUT_S, SPEC, RunRecord, params, run_to_end, start_job

pytestmark = pytest.mark.relion

CLASS3D_SID = "5f0c7a1e-2b3d-4c5e-8f90-a1b2c3d4e5f6"
REFINE_SID = "6a1d8b2f-3c4e-4d6f-9a01-b2c3d4e5f6a7"
POSTPROCESS_SID = "7b2e9c30-4d5f-4e70-8b12-c3d4e5f6a7b8"
REFINE_JOB = "301"
POSTPROCESS_JOB = "302"
KILL_AFTER = 2


@dataclass
class Campaign:
    project: Path
    refine_root: Path
    pick: Pick
    killed_at: int
    logs: list[str]
    result: dict
    again: dict


def _project_after_class3d(dataset: SyntheticResult, uninterrupted: RunRecord, data: Path) -> Path:
    """A project holding the data set and one finished Class3D, claimed by CLASS3D_SID as the
    intake's Class3D step claims its directory."""
    project = data / "campaign"
    project.mkdir()
    for entry in dataset.out.iterdir():
        if entry.is_file() and entry.suffix in (".star", ".mrcs", ".mrc", ".json"):
            shutil.copy2(entry, project / entry.name)
    shutil.copytree(dataset.out / "volumes", project / "volumes")
    (project / "default_pipeline.star").unlink(missing_ok=True)
    run_dir = project / "Class3D" / uninterrupted.root.parent.name
    shutil.copytree(uninterrupted.root.parent, run_dir)
    claim = json.loads((run_dir / CLAIM_FILE).read_text())
    claim["submission_id"] = CLASS3D_SID
    (run_dir / CLAIM_FILE).write_text(json.dumps(claim))
    subprocess.run(["chmod", "-R", "a+rwX", str(data)], check=True)
    return project


def _kill_when_both_halves_complete(attempt, root: Path, iteration: int) -> int:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if attempt.process.poll() is not None:
            raise AssertionError(f"ended before iteration {iteration}:\n{attempt.output()}")
        try:
            check_iteration(root, iteration, 1, halves=True)
        except CheckpointError:
            time.sleep(0.1)
            continue
        subprocess.run(["docker", "kill", attempt.name], capture_output=True, check=True)
        attempt.process.wait(timeout=120)
        newest = iteration
        while True:
            try:
                check_iteration(root, newest + 1, 1, halves=True)
            except CheckpointError:
                return newest
            newest += 1
    subprocess.run(["docker", "kill", attempt.name], capture_output=True, check=False)
    raise AssertionError(f"iteration {iteration} not complete after {RUN_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def campaign(
    dataset: SyntheticResult, uninterrupted: RunRecord, tmp_path_factory: pytest.TempPathFactory
) -> Campaign:
    data = tmp_path_factory.mktemp("campaign-data")
    project = _project_after_class3d(dataset, uninterrupted, data)
    logs = data / "logs"
    logs.mkdir()
    step = RefineStep(
        class3d=params(project.name), class3d_submission=CLASS3D_SID, local_healpix_order=3
    )
    (project / "refine3d.sbatch").write_text(
        render_refine(NodeShape.for_gpu_count(1), step, mode="local")
    )
    (project / "postprocess.sbatch").write_text(
        render_postprocess(
            f"/data/{project.name}", REFINE_SID, campaign_id=CLASS3D_SID, mode="local"
        )
    )
    refine_env = {"RELION_SPOT_SUBMISSION_ID": REFINE_SID}
    first = start_job(
        project, REFINE_JOB, 0, logs / "refine-0.log", script="refine3d.sbatch", env=refine_env
    )
    deadline = time.monotonic() + 300
    owner = Owner(cluster="", slurm_job_id="", submission_id=REFINE_SID)
    while (claimed := find(project, owner)) is None:
        if first.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the refinement claimed no directory:\n{first.output()}")
        time.sleep(0.2)
    root = claimed.directory / "run"
    killed_at = _kill_when_both_halves_complete(first, root, KILL_AFTER)
    second = run_to_end(
        project, REFINE_JOB, 1, logs / "refine-1.log", script="refine3d.sbatch", env=refine_env
    )
    post_env = {"RELION_SPOT_SUBMISSION_ID": POSTPROCESS_SID}
    post = run_to_end(
        project, POSTPROCESS_JOB, 0, logs / "post-0.log", script="postprocess.sbatch",
        env=post_env,
    )  # fmt: skip
    post_dir = find(project, Owner(cluster="", slurm_job_id="", submission_id=POSTPROCESS_SID))
    assert post_dir is not None, post
    result = json.loads((post_dir.directory / RESULT_FILE).read_text())
    again_log = run_to_end(
        project, POSTPROCESS_JOB, 1, logs / "post-1.log", script="postprocess.sbatch",
        env=post_env,
    )  # fmt: skip
    again = json.loads((post_dir.directory / RESULT_FILE).read_text())
    pick = Pick(**json.loads((claimed.directory / PICK_FILE).read_text()))
    return Campaign(
        project=project, refine_root=root, pick=pick, killed_at=killed_at,
        logs=[first.output(), second, post, again_log], result=result, again=again,
    )  # fmt: skip


def test_the_best_class_is_refined_from_its_own_particles_and_map(campaign: Campaign) -> None:
    pick = campaign.pick
    assert pick.run.startswith("Class3D/job") and pick.classes == SPEC.classes
    assert pick.share >= 1 / (2 * SPEC.classes)
    assert 0.3 * SPEC.particles_per_class <= pick.particles <= 1.7 * SPEC.particles_per_class
    job_dir = campaign.refine_root.parent
    assert (job_dir / "particles.star").is_file() and (job_dir / "reference.mrc").is_file()
    assert f"refining class {pick.chosen} of {pick.run}" in campaign.logs[0]


def test_a_reclaimed_refinement_continues_from_both_halves_and_converges(
    campaign: Campaign,
) -> None:
    root = campaign.refine_root
    history = read_history(root)
    assert history["resumed_from"] == [campaign.killed_at]
    assert f"continuing after iteration {campaign.killed_at}" in campaign.logs[1]
    (launched,) = [
        line for line in campaign.logs[1].splitlines() if line.startswith("checkpoint: apptainer")
    ]
    assert "--continue" in launched and "--iter" not in launched
    assert has_finished(root)
    progress = collect(root)
    assert progress["finished"] is True and progress["requested_iterations"] == 0
    assert progress["resolution_angstrom"] < 30


def test_the_refinement_is_in_the_project_pipeline_as_relion_enters_it(campaign: Campaign) -> None:
    text = (campaign.project / pipeline.PIPELINE).read_text()
    job = campaign.refine_root.parent.relative_to(campaign.project)
    assert f"{job}/ " in text or f"{job}/\t" in text or f"{job}/\n" in text
    assert pipeline.REFINE3D_TYPE in text
    assert f"{job}/run_half1_class001_unfil.mrc" in text
    (post,) = (campaign.project / "PostProcess").iterdir()
    assert pipeline.POSTPROCESS_TYPE in text
    assert f"PostProcess/{post.name}/postprocess.mrc" in text
    assert f"PostProcess/{post.name}/mask.mrc" in text


def test_the_postprocess_measures_the_map_against_the_gold_standard_and_the_truth(
    campaign: Campaign,
) -> None:
    result = campaign.result
    nyquist = 2 * SPEC.angpix
    assert nyquist <= result["resolution_angstrom"] < 30
    truth = result["truth_resolution_angstrom"]
    assert truth is not None and nyquist <= truth < 30, result
    assert result["truth_volume"].startswith("volumes/class_")
    post_dir = campaign.project / "PostProcess"
    (done,) = post_dir.iterdir()
    for name in ("mask.mrc", "postprocess.mrc", "postprocess_masked.mrc", "postprocess.star"):
        assert (done / name).is_file(), name
    assert "against the true volume" in campaign.logs[2]


def test_a_requeued_postprocess_makes_the_same_result_in_the_same_directory(
    campaign: Campaign,
) -> None:
    assert campaign.again == campaign.result
    assert len(list((campaign.project / "PostProcess").iterdir())) == 1


def test_the_campaigns_results_go_through_the_exchange_and_come_back_byte_for_byte(
    campaign: Campaign, tmp_path: Path
) -> None:
    """What ``relion-spot pull`` takes of real RELION output, exported to S3 (moto) and
    downloaded again: the maps a lab opens, identical, and the FSC pictures drawn."""
    import boto3
    from moto import mock_aws

    from relion_spot.exchange.download import pull
    from relion_spot.exchange.export import export

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="exchange")
        sent = export(
            campaign.project, [CLASS3D_SID, REFINE_SID, POSTPROCESS_SID], s3=s3,
            bucket="exchange", prefix="out/x/", export_id="x", say=lambda _: None,
        )  # fmt: skip
        got = pull(s3, "exchange", "out/x/", tmp_path / "pulled")
    refine = campaign.refine_root.parent.relative_to(campaign.project).as_posix()
    (post,) = (campaign.project / "PostProcess").iterdir()
    class3d = find(campaign.project, Owner("", "", CLASS3D_SID))
    assert class3d is not None
    assert [d for _, d in got.manifest.jobs] == [
        class3d.directory.relative_to(campaign.project).as_posix(), refine,
        f"PostProcess/{post.name}",
    ]  # fmt: skip
    names = {e.path for e in sent.files}
    for wanted in (
        f"{refine}/run_class001.mrc",
        f"{refine}/run_half1_class001_unfil.mrc",
        f"{refine}/run_half2_class001_unfil.mrc",
        f"{refine}/run_model.star",
        f"{refine}/fsc.png",
        f"PostProcess/{post.name}/postprocess.mrc",
        f"PostProcess/{post.name}/postprocess_masked.mrc",
        f"PostProcess/{post.name}/postprocess.star",
        f"PostProcess/{post.name}/fsc.png",
    ):
        assert wanted in names, wanted
    assert any(n.endswith(f"_class{SPEC.classes:03d}.mrc") for n in names), "the class maps"
    assert not any("optimiser" in n or n.endswith(CLAIM_FILE) for n in names)
    for entry in got.manifest.files:
        pulled = (tmp_path / "pulled" / entry.path).read_bytes()
        if entry.path.endswith("fsc.png"):
            assert pulled.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert pulled == (campaign.project / entry.path).read_bytes(), entry.path


def test_a_refinement_still_running_gives_its_newest_complete_iteration_to_pull(
    campaign: Campaign, tmp_path: Path
) -> None:
    from relion_spot.relion.checkpoint import iteration_files
    from relion_spot.relion.results import collect as results_of

    job = tmp_path / "Refine3D" / "job002"
    job.mkdir(parents=True)
    for path in iteration_files(campaign.refine_root, 3, 1, halves=True).values():
        shutil.copy(path, job / path.name)
    (job / "run_it004_half1_class001.mrc").write_bytes(b"half written")
    taken = {p.name for p in results_of(job).files}
    assert taken == {
        "run_it003_data.star", "run_it003_half1_model.star", "run_it003_half2_model.star",
        "run_it003_half1_class001.mrc", "run_it003_half2_class001.mrc",
    }  # fmt: skip
