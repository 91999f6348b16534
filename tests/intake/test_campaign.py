"""A campaign as one submission: Class3D, then the 3D auto-refine and the PostProcess as Slurm
jobs each after the one before (afterok), each under its own submission id and record; an
interrupted drain submits nothing twice; a step Slurm cancels because the one before it failed
is noted so. The drainer in this process against moto and the sbatch/squeue stand-in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from relion_spot.intake.images import ImageChecks
from relion_spot.intake.prepare import JobRejected
from relion_spot.intake.table import ACCEPTED, CANCELLED, REJECTED
from relion_spot.jobs.campaign import step_submission_id
from relion_spot.jobs.class3d import DEFAULT_IMAGE

from .conftest import MIN_JOB_AGE, Intake
from .test_drain import Crash, _crash_once, _drainer, _plant_report_item, _visible_again

SID = "3c9a1f2e-6b7d-4e8f-9a0b-1c2d3e4f5a6c"
REFINE = step_submission_id(SID, "refine3d")
POST = step_submission_id(SID, "postprocess")


def _campaign(**parameters: Any) -> str:
    return json.dumps(
        {
            "version": 1,
            "submission_id": SID,
            "template": "campaign",
            "parameters": {"preset": "benchmark", "K": 4, **parameters},
            "user": "alice",
            "submitted_at": "2026-11-03T10:15:00Z",
        }
    )


def test_step_ids_are_uuids_derived_from_the_campaigns() -> None:
    assert step_submission_id(SID, "class3d") == SID
    assert len({SID, REFINE, POST}) == 3
    # Pinned: a drain of a newer version must find the steps an older one submitted.
    assert REFINE == "7453655a-5d56-5b0b-9742-04ff873280c9"


def test_a_campaign_is_three_jobs_each_after_the_one_before(intake: Intake) -> None:
    intake.send(_campaign(refine_class=2))
    assert intake.drainer().step() == ["accepted"]

    calls = intake.slurm.sbatch_calls()
    assert calls == [
        f"--parsable --comment=relion-spot:{SID}",
        f"--parsable --comment=relion-spot:{REFINE} --dependency=afterok:42 "
        "--kill-on-invalid-dep=yes",
        f"--parsable --comment=relion-spot:{POST} --dependency=afterok:43 "
        "--kill-on-invalid-dep=yes",
    ]
    assert "relion_refine " in intake.slurm.script("42") and "--K 4" in intake.slurm.script("42")
    refine = intake.slurm.script("43")
    assert "#SBATCH --partition=gpu" in refine and "relion_refine_mpi" in refine
    assert f"--class3d {SID} --class 2" in refine and "--auto_refine" in refine
    post = intake.slurm.script("44")
    assert "#SBATCH --partition=cpu" in post and f"--refine {REFINE}" in post

    campaign = intake.table.get(SID)
    assert campaign is not None and (campaign.state, campaign.job_id) == (ACCEPTED, "42")
    assert campaign.template == "campaign"
    assert f"refine3d as Slurm job 43 ({REFINE}), postprocess as Slurm job 44 ({POST})" in (
        campaign.message
    )
    for sid, job, step in ((REFINE, "43", "refine3d"), (POST, "44", "postprocess")):
        record = intake.table.get(sid)
        assert record is not None and (record.state, record.job_id) == (ACCEPTED, job)
        assert record.template == step and record.user == "alice"
        assert record.sender_id == campaign.sender_id, "the submitter may cancel each step"
        assert json.loads(record.parameters) == {"campaign": SID, "step": step}
    assert intake.queued() == 0


def test_items_a_node_made_under_the_steps_keys_do_not_leave_a_step_without_its_record(
    intake: Intake,
) -> None:
    """The step ids are known to anyone who sees the campaign's id (squeue's comment); a node may
    make items of the report's attributes under them. Each step is still recorded as accepted
    with its job, so its owner can follow and cancel it."""
    for sid in (REFINE, POST):
        _plant_report_item(intake, sid)
    intake.send(_campaign(refine_class=2))
    assert intake.drainer().step() == ["accepted"]
    for sid, job in ((REFINE, "43"), (POST, "44")):
        record = intake.table.get(sid)
        assert record is not None and (record.state, record.job_id) == (ACCEPTED, job)
    assert len(intake.slurm.sbatch_calls()) == 3


def test_a_drain_interrupted_between_steps_submits_only_what_is_missing(intake: Intake) -> None:
    intake.send(_campaign())
    drainer = _drainer(intake)
    _crash_once(drainer.table, "finish")  # dies writing the refinement's record
    with pytest.raises(Crash):
        drainer.step()
    assert len(intake.slurm.sbatch_calls()) == 2

    _visible_again(drainer)
    assert drainer.step() == ["recovered"]
    comments = [c.split()[1] for c in intake.slurm.sbatch_calls()]
    assert comments == [f"--comment=relion-spot:{s}" for s in (SID, REFINE, POST)]
    assert [intake.table.get(s).job_id for s in (SID, REFINE, POST)] == ["42", "43", "44"]  # type: ignore[union-attr]
    assert intake.queued() == 0


def test_an_unknown_step_outcome_leaves_the_message_and_the_retry_finishes_it(
    intake: Intake,
) -> None:
    intake.send(_campaign())
    drainer = _drainer(intake)
    original = drainer.slurm.submit
    calls = [0]

    def third_unknown(script: str, sid: str, *, after: str | None = None) -> str:
        calls[0] += 1
        if calls[0] == 3:
            intake.slurm.set("sbatch-down")
        return original(script, sid, after=after)

    drainer.slurm.submit = third_unknown  # type: ignore[method-assign]
    assert drainer.step() == ["retry"]
    assert intake.table.get(SID).state == "submitting"  # type: ignore[union-attr]
    intake.slurm.clear("sbatch-down")
    _visible_again(drainer)
    assert drainer.step() == ["recovered"]
    assert [j.split("|")[1] for j in intake.slurm.jobs()[1:]] == [
        f"relion-spot:{s}" for s in (SID, REFINE, POST)
    ]


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"refine_class": "worst"}, "parameter refine_class = 'worst' is not valid: 'best' or"),
        ({"local_healpix_order": 1}, "parameter local_healpix_order = '1' is not valid"),
        ({"continue_from": "Class3D/job005:3"}, "is not valid in a campaign"),
        ({"project_dir": "/etc"}, "parameter project_dir = '/etc' is not valid"),
    ],
)
def test_a_bad_campaign_is_one_rejection_and_nothing_in_slurm(
    intake: Intake, parameters: dict[str, Any], reason: str
) -> None:
    intake.send(_campaign(**parameters))
    assert intake.drainer().step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None and record.state == REJECTED
    assert reason in record.message
    assert intake.slurm.sbatch_calls() == []


def test_a_step_slurm_cancels_after_the_step_before_failed_is_noted_so(intake: Intake) -> None:
    checks = ImageChecks(slurm=intake.slurm.jobs_object(), image=DEFAULT_IMAGE)
    drainer = intake.drainer(images=checks)
    intake.send(_campaign())
    assert drainer.step() == ["accepted"]
    image, first, refine, post = (j.split("|")[0] for j in intake.slurm.jobs()[1:])
    intake.slurm.set_state(first, "FAILED")
    intake.slurm.set_state(
        refine, "CANCELLED", "DependencyNeverSatisfied", f"afterok:{first}(failed)"
    )
    intake.slurm.set_state(
        post, "CANCELLED", "DependencyNeverSatisfied", f"afterok:{refine}(failed)"
    )
    drainer.step()
    for sid, job, before in ((REFINE, refine, first), (POST, post, refine)):
        record = intake.table.get(sid)
        assert record is not None and record.cancel_state == CANCELLED
        assert record.cancel_message == (
            f"Slurm cancelled job {job}: the campaign step it waited for (Slurm job {before}) "
            "did not succeed"
        )
    assert intake.table.get(SID).cancel_state == ""  # type: ignore[union-attr]
    assert image != first


def test_a_message_that_differs_from_the_claimed_campaign_steers_nothing(intake: Intake) -> None:
    intake.send(_campaign())
    drainer = _drainer(intake)
    _crash_once(drainer.table, "finish")  # the campaign is claimed, J1 and J2 are in Slurm
    with pytest.raises(Crash):
        drainer.step()
    for other in (
        _campaign(refine_class=3),
        json.dumps({**json.loads(_campaign()), "dry_run": True}),
    ):
        intake.send(other)
        assert drainer.step() == ["discarded"]
    assert len(intake.slurm.sbatch_calls()) == 2
    assert intake.table.get(SID).state == "submitting"  # type: ignore[union-attr]
    _visible_again_all(drainer)
    assert drainer.step() == ["recovered"]
    assert "--class best" in intake.slurm.script("43")


def _visible_again_all(drainer: Any) -> None:
    for receipt in drainer.sqs.receipts:
        try:
            drainer.sqs.change_message_visibility(
                QueueUrl=drainer.queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except ClientError:  # a deleted message's receipt: nothing to show again
            continue


def test_a_recovered_campaign_is_not_preflighted_again(intake: Intake) -> None:
    intake.send(_campaign())
    calls = [0]
    real = intake.drainer().prepare

    def data_gone_after_the_first(params: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise JobRejected("preflight: particles.star is missing")
        return real(params)

    drainer = _drainer(intake, prepare=data_gone_after_the_first)
    _crash_once(drainer.table, "finish")
    with pytest.raises(Crash):
        drainer.step()
    _visible_again(drainer)
    assert drainer.step() == ["recovered"]
    assert calls[0] == 1
    assert [intake.table.get(s).job_id for s in (SID, REFINE, POST)] == ["42", "43", "44"]  # type: ignore[union-attr]


def test_a_campaign_whose_class3d_slurm_forgot_still_gets_its_later_steps(intake: Intake) -> None:
    now = [1_790_000_000.0]
    intake.send(_campaign())
    drainer = _drainer(intake, clock=lambda: now[0])
    _crash_once(drainer.table, "finish")  # J1 and J2 in Slurm, neither recorded
    with pytest.raises(Crash):
        drainer.step()
    intake.slurm.forget("42")  # J1 ended more than MinJobAge ago
    now[0] += MIN_JOB_AGE + 60
    _visible_again(drainer)
    assert drainer.step() == ["recovered"]
    campaign = intake.table.get(SID)
    assert campaign is not None and campaign.state == ACCEPTED and campaign.job_id is None
    assert "no longer listed by Slurm" in campaign.message
    assert intake.table.get(REFINE).job_id == "43"  # type: ignore[union-attr]
    assert intake.table.get(POST).job_id == "44"  # type: ignore[union-attr]
    assert intake.slurm.sbatch_calls()[-1].endswith(
        "--dependency=afterok:43 --kill-on-invalid-dep=yes"
    )


def test_a_campaign_nothing_of_which_slurm_lists_after_min_job_age_is_not_run_twice(
    intake: Intake,
) -> None:
    now = [1_790_000_000.0]
    intake.send(_campaign())
    drainer = _drainer(intake, clock=lambda: now[0])
    _crash_once(drainer.table, "finish")
    with pytest.raises(Crash):
        drainer.step()
    intake.slurm.forget("42")
    intake.slurm.forget("43")
    now[0] += MIN_JOB_AGE + 60
    _visible_again(drainer)
    assert drainer.step() == ["uncertain"]
    assert len(intake.slurm.sbatch_calls()) == 2
