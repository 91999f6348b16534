"""A Class3D job waits for the job that makes and checks its RELION image on the CPU partition;
an image already checked costs nothing; an image whose check failed leaves a cancelled record
naming it. The drainer in this process against moto and the sbatch/squeue stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relion_spot.intake.images import ImageChecks
from relion_spot.intake.table import ACCEPTED, CANCELLED, REJECTED
from relion_spot.jobs.class3d import DEFAULT_IMAGE, LOCAL_IMAGE
from relion_spot.jobs.image import render_image_job, sif_name

from .conftest import FakeSlurm, Intake

SID = "5e1f3a2b-8c4d-4e6f-9a0b-1c2d3e4f5a6b"


def _message(sid: str = SID) -> str:
    return json.dumps(
        {
            "version": 1,
            "submission_id": sid,
            "template": "class3d",
            "parameters": {"preset": "benchmark", "K": 4},
            "user": "alice",
            "submitted_at": "2026-11-03T10:15:00Z",
        }
    )


def _checks(
    intake: Intake, *, image: str = DEFAULT_IMAGE, cache: Path | None = None
) -> ImageChecks:
    return ImageChecks(slurm=intake.slurm.jobs_object(), image=image, cache_dir=cache)


def _calls_with_comment(slurm: FakeSlurm, prefix: str) -> list[str]:
    return [c for c in slurm.sbatch_calls() if f"--comment={prefix}" in c]


def test_a_gpu_job_waits_for_a_new_image_job(intake: Intake) -> None:
    drainer = intake.drainer(images=_checks(intake))
    intake.send(_message())
    drainer.step()

    sif = sif_name(DEFAULT_IMAGE)
    assert intake.slurm.jobs()[1:] == [f"42|relion-spot-image:{sif}", f"43|relion-spot:{SID}"]
    (gpu_call,) = _calls_with_comment(intake.slurm, "relion-spot:")
    assert "--dependency=afterok:42 --kill-on-invalid-dep=yes" in gpu_call
    assert intake.slurm.script("42") == render_image_job(DEFAULT_IMAGE, mode="cloud").rstrip()
    record = intake.table.get(SID)
    assert record is not None and record.state == ACCEPTED and record.job_id == "43"
    assert f"waits for Slurm job 42, which makes and checks the RELION image {DEFAULT_IMAGE}" in (
        record.message
    )


def test_jobs_share_the_pending_image_job(intake: Intake) -> None:
    drainer = intake.drainer(images=_checks(intake))
    other = "6e1f3a2b-8c4d-4e6f-9a0b-1c2d3e4f5a6b"
    intake.send(_message())
    drainer.step()
    intake.slurm.set_state("42", "RUNNING")
    intake.send(_message(other))
    drainer.step()

    assert len(_calls_with_comment(intake.slurm, "relion-spot-image:")) == 1
    assert all(
        "--dependency=afterok:42 " in c for c in _calls_with_comment(intake.slurm, "relion-spot:")
    )


def test_an_image_checked_before_costs_no_job(intake: Intake, tmp_path: Path) -> None:
    cache = tmp_path / "containers"
    cache.mkdir()
    (cache / f"{sif_name(DEFAULT_IMAGE)}.checked").write_text("RELION version: 5.0.1\n")
    drainer = intake.drainer(images=_checks(intake, cache=cache))
    intake.send(_message())
    drainer.step()

    assert _calls_with_comment(intake.slurm, "relion-spot-image:") == []
    (gpu_call,) = _calls_with_comment(intake.slurm, "relion-spot:")
    assert "--dependency" not in gpu_call
    record = intake.table.get(SID)
    assert record is not None and "already made and checked" in record.message


def test_a_completed_image_job_still_listed_means_checked(intake: Intake) -> None:
    sif = sif_name(LOCAL_IMAGE)
    intake.slurm.set("jobs", f"7|(null)\n30|relion-spot-image:{sif}\n")
    intake.slurm.set_state("30", "COMPLETED")
    drainer = intake.drainer(images=_checks(intake, image=LOCAL_IMAGE))
    intake.send(_message())
    drainer.step()

    assert _calls_with_comment(intake.slurm, "relion-spot-image:") == []
    assert "--dependency" not in _calls_with_comment(intake.slurm, "relion-spot:")[0]


def test_a_failed_image_check_cancels_the_record_naming_the_image(intake: Intake) -> None:
    drainer = intake.drainer(images=_checks(intake))
    intake.send(_message())
    drainer.step()
    intake.slurm.set_state("42", "FAILED", "NonZeroExitCode")
    intake.slurm.set_state("43", "CANCELLED", "DependencyNeverSatisfied", "afterok:42(failed)")
    drainer.step()

    record = intake.table.get(SID)
    assert record is not None and record.state == ACCEPTED
    assert record.cancel_state == CANCELLED
    assert record.cancel_message == (
        f"Slurm cancelled job 43 before any GPU was launched: the RELION image {DEFAULT_IMAGE} "
        "failed its check on the CPU partition (Slurm job 42; its log is relion-image-42.out in "
        "the image cache)"
    )
    drainer.step()
    assert intake.table.get(SID) == record, "noted once"


def test_a_comment_a_job_rewrites_cannot_mark_anothers_submission_failed(
    intake: Intake,
) -> None:
    """A job's owner may rewrite its comment (``scontrol update comment=``). One shaped like
    squeue's text fields once read as another submission's job cancelled for a failed image."""
    drainer = intake.drainer(images=_checks(intake))
    intake.send(_message())
    drainer.step()
    forged = f"relion-spot:{SID}|CANCELLED|DependencyNeverSatisfied|afterok:42(failed)"
    with (intake.slurm.dir / "jobs").open("a") as jobs:
        jobs.write(f"44|{forged}\n")
    intake.slurm.set_state("44", "RUNNING")
    drainer.step()

    record = intake.table.get(SID)
    assert record is not None and record.state == ACCEPTED and record.job_id == "43"
    assert not record.cancel_state


def test_a_job_given_anothers_comment_cannot_fail_that_submission_through_its_dependency(
    intake: Intake,
) -> None:
    """The job user may sbatch a job with a submission's comment that depends on a job of its
    own that fails; Slurm cancels it for DependencyNeverSatisfied. It is not the job carrying
    the submission (the oldest with that comment is), so it says nothing about it."""
    drainer = intake.drainer(images=_checks(intake))
    intake.send(_message())
    drainer.step()
    intake.slurm.set_state("43", "RUNNING")
    with (intake.slurm.dir / "jobs").open("a") as jobs:
        jobs.write(f"60|(null)\n61|relion-spot:{SID}\n")
    intake.slurm.set_state("60", "FAILED", "NonZeroExitCode")
    intake.slurm.set_state("61", "CANCELLED", "DependencyNeverSatisfied", "afterok:60(failed)")
    drainer.step()

    record = intake.table.get(SID)
    assert record is not None and record.state == ACCEPTED and record.job_id == "43"
    assert not record.cancel_state


def test_an_image_job_held_after_a_failed_requeue_is_not_waited_for(intake: Intake) -> None:
    sif = sif_name(DEFAULT_IMAGE)
    with (intake.slurm.dir / "jobs").open("a") as jobs:
        jobs.write(f"30|relion-spot-image:{sif}\n")
    intake.slurm.set_state("30", "PENDING+REQUEUE_HOLD", "JobHeldAdmin")
    drainer = intake.drainer(images=_checks(intake))
    intake.send(_message())
    drainer.step()

    (image_job,) = _calls_with_comment(intake.slurm, "relion-spot-image:")
    (gpu_job,) = _calls_with_comment(intake.slurm, "relion-spot:")
    assert "--dependency=afterok:42" in gpu_job and "afterok:30" not in gpu_job, image_job


def test_an_image_that_names_no_definition_is_a_clear_rejection(intake: Intake) -> None:
    image = "def:/nowhere/relion.def"
    drainer = intake.drainer(images=_checks(intake, image=image))
    intake.send(_message())
    drainer.step()

    record = intake.table.get(SID)
    assert record is not None and record.state == REJECTED
    assert record.message == (
        f"the RELION image {image} cannot be made: relion-image: {image}: no definition file "
        "/nowhere/relion.def"
    )
    assert intake.slurm.sbatch_calls() == []


@pytest.mark.parametrize("mode, flag", [("cloud", "--check --cuda "), ("local", "--check ")])
def test_the_image_job_checks_cuda_only_on_gpu_images(mode: str, flag: str) -> None:
    script = render_image_job(DEFAULT_IMAGE, mode=mode)  # type: ignore[arg-type]
    assert f"relion-image.sh {flag}{DEFAULT_IMAGE} /containers" in script
    assert "#SBATCH --partition=cpu" in script
