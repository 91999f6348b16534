"""The drainer in this process against moto, with a stand-in for sbatch/squeue run as real
programs: round trip, rejections, duplicates, and a crash at every point of a drain step."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from relion_spot.intake import drain
from relion_spot.intake.client import (
    SubmissionPending,
    SubmissionRejected,
    submit,
    wait_for_acceptance,
)
from relion_spot.intake.config import DATA_ROOT_ENV, QUEUE_URL_ENV, STAGE_BUCKETS_ENV, TABLE_ENV
from relion_spot.intake.drain import DrainSettings, IntakeConfigError
from relion_spot.intake.prepare import JobPreparer
from relion_spot.intake.table import Record
from relion_spot.slurm.spec import SPEC_ENV

from .conftest import MIN_JOB_AGE, FakeSlurm, Intake, cluster_spec

SID = "0b7c63c4-7f0e-4a39-8d4e-5a0d8e0c1f2a"


class Crash(BaseException):
    """Stands for the process dying at that point (nothing after it runs)."""


def _message(**parameters: Any) -> str:
    return json.dumps(
        {
            "version": 1,
            "submission_id": SID,
            "template": "class3d",
            "parameters": parameters or {"preset": "benchmark", "K": 4},
            "user": "alice",
            "submitted_at": "2026-11-03T10:15:00Z",
        }
    )


class HeldMessages:
    """The drainer's SQS client, noting the receipt of every message it receives."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.receipts: list[str] = []

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        response = self._sqs.receive_message(**kwargs)
        self.receipts += [m["ReceiptHandle"] for m in response.get("Messages") or []]
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def _drainer(intake: Intake, **overrides: Any) -> drain.Drainer:
    return intake.drainer(sqs=HeldMessages(intake.sqs), **overrides)


def _visible_again(drainer: drain.Drainer) -> None:
    """What the visibility timeout does for the message a dead drainer held, without waiting."""
    held = drainer.sqs
    assert isinstance(held, HeldMessages)
    receipt = held.receipts[-1]
    held.change_message_visibility(
        QueueUrl=drainer.queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
    )


def _crash_once(target: Any, name: str) -> list[int]:
    """Make ``target.name`` die the first time it is called; returns a call counter."""
    original = getattr(target, name)
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise Crash(name)
        return original(*args, **kwargs)

    setattr(target, name, dying)
    return calls


def test_a_submission_round_trips_to_a_slurm_job(intake: Intake) -> None:
    sent = submit(
        intake.sqs,
        intake.table,
        intake.queue_url,
        parameters={"preset": "benchmark", "K": 4, "iter": 30},
        user="alice",
    )
    assert intake.drainer().step() == ["accepted"]
    assert wait_for_acceptance(intake.table, sent.submission_id, timeout=1) == "42"

    (call,) = intake.slurm.sbatch_calls()
    sid = sent.submission_id
    assert call == f"--parsable --comment=relion-spot:{sid}"
    # Not --export=ALL,...: that makes slurmd load a login environment it cannot in a container.
    (env,) = intake.slurm.sbatch_environments()
    assert f"RELION_SPOT_SUBMISSION_ID={sid}" in env.split()
    script = intake.slurm.script("42")
    assert "#SBATCH --gres=gpu:1" in script
    assert "--K 4" in script and "--iter 30" in script
    assert all("--states=all" in c and "--json" in c for c in intake.slurm.squeue_calls())

    record = intake.table.get(sent.submission_id)
    assert record is not None
    assert (record.state, record.job_id, record.user) == ("accepted", "42", "alice")
    assert record.sender_id, "SQS says who sent it"
    assert json.loads(record.parameters) == {"preset": "benchmark", "K": 4, "iter": 30}
    assert record.message.startswith("preflight skipped")
    assert record.claimed_at is not None and record.decided_at is not None
    assert record.received_at is not None
    (item,) = intake.items()
    assert item["report_job_id"] == {"S": "42"}  # the job whose reports the item takes
    assert intake.queued() == 0


def _plant_report_item(intake: Intake, submission_id: str) -> None:
    """What root on a node may do with its UpdateItem (the report's attributes, no condition):
    make an item of its own under a submission's key, before the drainer has claimed it."""
    intake.dynamodb.update_item(
        TableName=intake.table.name,
        Key={"submission_id": {"S": submission_id}},
        UpdateExpression="SET #p = :p, #t = :t, #j = :j",
        ExpressionAttributeNames={"#p": "progress", "#t": "log_tail", "#j": "report_job_id"},
        ExpressionAttributeValues={
            ":p": {"M": {"state": {"S": "FINISHED"}}},
            ":t": {"S": "planted"},
            ":j": {"S": "42"},
        },
        ReturnValues="NONE",
    )


def test_an_item_a_node_made_under_a_submissions_key_neither_blocks_nor_steers_it(
    intake: Intake,
) -> None:
    sent = submit(
        intake.sqs, intake.table, intake.queue_url, parameters={"preset": "benchmark"}, user="a"
    )
    _plant_report_item(intake, sent.submission_id)
    assert intake.table.get(sent.submission_id) is None, "no claim, no decision"

    assert intake.drainer().step() == ["accepted"]
    record = intake.table.get(sent.submission_id)
    assert record is not None and (record.state, record.job_id) == ("accepted", "42")
    (item,) = intake.items()
    assert "progress" not in item and "log_tail" not in item, "the decision replaced it"
    assert intake.queued() == 0


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"K": 0}, "parameter K = 0 is not valid: a whole number from 1 to 50"),
        ({"sym": "C0"}, "parameter sym = 'C0' is not valid: a point group such as C1"),
        (
            {"extra_flags": ["--tua2_fudge", "2"]},
            "parameter extra_flags: relion_refine does not know the flag --tua2_fudge",
        ),
    ],
)
def test_a_bad_message_is_rejected_with_a_clear_record(
    intake: Intake, caplog: pytest.LogCaptureFixture, parameters: dict, reason: str
) -> None:
    intake.send(_message(**parameters))
    with caplog.at_level(logging.INFO, logger="relion_spot.intake.drain"):
        assert intake.drainer().step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None and record.state == "rejected"
    assert record.message.startswith(reason)
    assert record.job_id is None
    assert all("report_job_id" not in item for item in intake.items())  # no job reports here
    assert (record.user, record.submitted_at) == ("alice", "2026-11-03T10:15:00Z")
    with pytest.raises(SubmissionRejected) as rejected:
        wait_for_acceptance(intake.table, SID, timeout=1)
    assert rejected.value.reason == record.message
    assert intake.slurm.sbatch_calls() == []
    assert intake.queued() == 0
    (line,) = [r for r in caplog.records if r.name == "relion_spot.intake.drain"]
    assert line.getMessage() == f"{SID}: rejected: {record.message}"
    assert line.exc_info is None, "bad input never logs a traceback"


def test_a_message_without_a_usable_id_is_logged_and_dropped(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    intake.send("definitely not JSON")
    with caplog.at_level(logging.INFO, logger="relion_spot.intake.drain"):
        assert intake.drainer().step() == ["discarded"]
    assert intake.items() == []
    assert intake.queued() == 0
    (line,) = caplog.records
    assert "discarded: the message is not JSON" in line.getMessage()


def test_a_duplicated_message_is_submitted_once(intake: Intake) -> None:
    for _ in range(3):  # a standard queue may deliver a message more than once
        intake.send(_message())
    drainer = _drainer(intake)
    outcomes = [o for _ in range(3) for o in drainer.step()]
    assert outcomes == ["accepted", "duplicate", "duplicate"]
    assert len(intake.slurm.sbatch_calls()) == 1
    assert [i["job_id"]["S"] for i in intake.items()] == ["42"]
    assert intake.queued() == 0


def test_a_client_retrying_with_the_same_id_sends_nothing_once_decided(intake: Intake) -> None:
    first = submit(
        intake.sqs, intake.table, intake.queue_url, parameters={"preset": "benchmark"}, user="alice"
    )
    intake.drainer().step()
    again = submit(
        intake.sqs,
        intake.table,
        intake.queue_url,
        parameters={"preset": "benchmark"},
        user="alice",
        submission_id=first.submission_id,
    )
    assert again.submission_id == first.submission_id
    assert intake.queued() == 0
    assert wait_for_acceptance(intake.table, first.submission_id, timeout=1) == "42"


def test_crash_after_sbatch_before_the_record_finds_the_job_again(intake: Intake) -> None:
    intake.send(_message())
    drainer = _drainer(intake)
    _crash_once(drainer.table, "finish")
    with pytest.raises(Crash):
        drainer.step()
    claim = intake.table.get(SID)
    assert claim is not None and claim.state == "submitting"

    _visible_again(drainer)
    assert drainer.step() == ["recovered"]
    record = intake.table.get(SID)
    assert record is not None
    assert (record.state, record.job_id) == ("accepted", "42")
    assert record.message.startswith("found in Slurm as job 42")
    assert record.claimed_at == claim.claimed_at
    assert len(intake.slurm.sbatch_calls()) == 1
    assert intake.queued() == 0


def test_crash_after_the_claim_before_sbatch_submits_on_the_retry(intake: Intake) -> None:
    intake.send(_message())
    drainer = _drainer(intake)
    _crash_once(drainer.slurm, "submit")
    with pytest.raises(Crash):
        drainer.step()
    claim = intake.table.get(SID)
    assert claim is not None and claim.state == "submitting"
    assert intake.slurm.sbatch_calls() == []

    _visible_again(drainer)
    assert drainer.step() == ["accepted"]
    record = intake.table.get(SID)
    assert record is not None and (record.state, record.job_id) == ("accepted", "42")
    assert record.claimed_at == claim.claimed_at, "the first claim's time is kept"
    assert len(intake.slurm.sbatch_calls()) == 1


def test_crash_after_the_record_before_delete_only_deletes_on_the_retry(intake: Intake) -> None:
    intake.send(_message())
    drainer = _drainer(intake)
    _crash_once(drainer, "_delete")
    with pytest.raises(Crash):
        drainer.step()
    _visible_again(drainer)
    assert drainer.step() == ["duplicate"]
    assert len(intake.slurm.sbatch_calls()) == 1
    assert intake.queued() == 0


def test_a_claim_older_than_min_job_age_is_not_run_twice(intake: Intake) -> None:
    """sbatch ran, the drain died, and the message came back only after Slurm forgot the job:
    "not in squeue" no longer proves "never submitted", so the drainer refuses to guess."""
    intake.send(_message())
    now = [1_800_000_000.0]
    drainer = _drainer(intake, clock=lambda: now[0])
    _crash_once(drainer.table, "finish")
    with pytest.raises(Crash):
        drainer.step()
    intake.slurm.forget("42")
    now[0] += MIN_JOB_AGE
    _visible_again(drainer)
    assert drainer.step() == ["uncertain"]
    record = intake.table.get(SID)
    assert record is not None and record.state == "rejected"
    assert record.message.startswith("not submitted again: a drain claimed this submission at")
    assert f"comment relion-spot:{SID}" in record.message
    assert len(intake.slurm.sbatch_calls()) == 1


def test_a_young_claim_with_no_job_in_slurm_is_submitted(intake: Intake) -> None:
    """The same crash, retried while Slurm would still list any job the first drain made."""
    intake.send(_message())
    now = [1_800_000_000.0]
    drainer = _drainer(intake, clock=lambda: now[0])
    _crash_once(drainer.slurm, "submit")
    with pytest.raises(Crash):
        drainer.step()
    now[0] += MIN_JOB_AGE - drain.CLAIM_MARGIN_SECONDS - 1
    _visible_again(drainer)
    assert drainer.step() == ["accepted"]


def test_nothing_is_received_while_slurm_does_not_answer(intake: Intake) -> None:
    intake.send(_message())
    intake.slurm.set("down")
    drainer = _drainer(intake)
    assert drainer.step() == ["slurm-unavailable"]
    attributes = intake.sqs.get_queue_attributes(
        QueueUrl=intake.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1", "still visible, receive not spent"
    intake.slurm.clear("down")
    assert drainer.step() == ["accepted"]


def test_an_unknown_sbatch_outcome_leaves_the_message_for_a_retry(intake: Intake) -> None:
    intake.send(_message())
    intake.slurm.set("sbatch-down")
    drainer = _drainer(intake)
    assert drainer.step() == ["retry"]
    claim = intake.table.get(SID)
    assert claim is not None and claim.state == "submitting"
    intake.slurm.clear("sbatch-down")
    _visible_again(drainer)
    assert drainer.step() == ["accepted"]
    assert [c.split()[0] for c in intake.slurm.sbatch_calls()] == ["--parsable"] * 2


def test_slurm_refusing_the_job_is_a_rejection_with_its_reason(intake: Intake) -> None:
    intake.send(_message())
    intake.slurm.set("refuse", "Invalid partition name specified")
    assert intake.drainer().step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None
    assert record.message == "Slurm refused the job: Invalid partition name specified"


def test_a_job_carried_twice_in_slurm_counts_once(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    (intake.slurm.dir / "jobs").write_text(
        f"7|(null)\n51|relion-spot:{SID}\n50|relion-spot:{SID}\n"
    )
    with caplog.at_level(logging.WARNING):
        assert intake.slurm.jobs_object().find(SID) == "50"
    assert "carried by Slurm jobs 50 and 51" in caplog.text


def test_wait_gives_up_with_a_reason(intake: Intake) -> None:
    with pytest.raises(SubmissionPending, match="has not taken it from the queue yet"):
        wait_for_acceptance(intake.table, SID, timeout=0.01, poll_seconds=0.01)
    intake.table.claim(Record(SID, "submitting", claimed_at=1))
    with pytest.raises(SubmissionPending, match="the controller is submitting it to Slurm"):
        wait_for_acceptance(intake.table, SID, timeout=0.01, poll_seconds=0.01)


# Preflight: against the project directory as the controller sees the nodes' /data.

BOX, ANGPIX = 32, 2.0


def _tiny_project(directory: Path) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    with mrcfile.new(directory / "stack.mrcs") as mrc:
        mrc.set_data(rng.normal(size=(12, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = ANGPIX
    with mrcfile.new(directory / "ref.mrc") as mrc:
        mrc.set_data(rng.normal(size=(BOX, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = ANGPIX
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnImagePixelSize": [ANGPIX], "rlnImageSize": [BOX]}
    )
    particles = pd.DataFrame(
        {"rlnImageName": [f"{i:06d}@stack.mrcs" for i in range(1, 13)], "rlnOpticsGroup": 1}
    )
    starfile.write({"optics": optics, "particles": particles}, directory / "p.star")


TINY = {
    "project_dir": "/data/tiny",
    "particles": "p.star",
    "reference": "ref.mrc",
    "particle_diameter": 50,
    "ini_high": 30,
    "K": 2,
    "iter": 5,
}


def test_preflight_passes_on_good_data_and_is_noted(intake: Intake, tmp_path: Path) -> None:
    _tiny_project(tmp_path / "efs" / "tiny")
    prepare = JobPreparer.from_spec(cluster_spec(), data_root=tmp_path / "efs")
    intake.send(_message(**TINY))
    assert intake.drainer(prepare=prepare).step() == ["accepted"]
    record = intake.table.get(SID)
    assert record is not None
    assert record.message.startswith("preflight ok: 12 particles, box 32 at 2 A/px, K=2")
    # The time and cost the model predicts, per GPU type of the group, before anything runs.
    predicted = record.message.split("; predicted (relion_spot.estimate.job, a model): ")[1]
    assert predicted.startswith("g5.xlarge (1x A10G): ~") and " spot to $" in predicted


def test_a_dry_run_is_checked_and_estimated_and_submits_nothing(
    intake: Intake, tmp_path: Path
) -> None:
    _tiny_project(tmp_path / "efs" / "tiny")
    prepare = JobPreparer.from_spec(cluster_spec(), data_root=tmp_path / "efs")
    body = {**json.loads(_message(**TINY)), "dry_run": True}
    intake.send(json.dumps(body))
    assert intake.drainer(prepare=prepare).step() == ["estimated"]
    record = intake.table.get(SID)
    assert record is not None and record.state == "estimated" and record.final
    assert record.job_id is None and intake.slurm.sbatch_calls() == []
    assert record.message.startswith("dry run: preflight ok: 12 particles, box 32 at 2 A/px")
    assert "; predicted (relion_spot.estimate.job, a model): g5.xlarge (1x A10G): ~" in (
        record.message
    )
    assert intake.queued() == 0
    # A bad dry run is a rejection like any other.
    intake.send(json.dumps({**body, "submission_id": str(uuid.uuid4()), "dry_run": "yes"}))
    assert intake.drainer(prepare=prepare).step() == ["rejected"]


def test_preflight_refusal_is_a_rejection_in_the_nodes_paths(
    intake: Intake, tmp_path: Path
) -> None:
    _tiny_project(tmp_path / "efs" / "tiny")
    prepare = JobPreparer.from_spec(cluster_spec(), data_root=tmp_path / "efs")
    intake.send(_message(**{**TINY, "particles": "missing.star"}))
    assert intake.drainer(prepare=prepare).step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None
    assert record.message == "preflight: particles STAR /data/tiny/missing.star does not exist"
    assert intake.slurm.sbatch_calls() == []


def test_preflight_is_skipped_and_said_so_where_the_data_is_not_mounted(tmp_path: Path) -> None:
    from relion_spot.jobs.parameters import Class3dParams

    prepared = JobPreparer.from_spec(cluster_spec(), data_root=tmp_path / "absent")(Class3dParams())
    assert prepared.note == (
        f"preflight skipped: {tmp_path / 'absent'} (the nodes' /data) is not mounted on the "
        "controller"
    )
    outside = JobPreparer.from_spec(cluster_spec(), data_root=tmp_path)(
        Class3dParams(project_dir="/home/lab/p")
    )
    assert outside.note.startswith("preflight skipped: project_dir /home/lab/p is outside /data")


# Settings from the environment.


def test_settings_come_from_the_environment(fake_slurm: FakeSlurm) -> None:
    settings = DrainSettings.from_env(
        {
            QUEUE_URL_ENV: "https://sqs.us-east-1.amazonaws.com/1/q",
            TABLE_ENV: "t",
            SPEC_ENV: cluster_spec().to_json(),
            "RELION_SPOT_INTAKE_SBATCH": f"{fake_slurm.sbatch} --test-only",
            DATA_ROOT_ENV: "/data",
        }
    )
    assert settings.sbatch == (str(fake_slurm.sbatch), "--test-only")
    assert settings.squeue == ("squeue",)
    assert settings.data_root == Path("/data")
    assert (settings.mode, settings.spec.min_job_age) == ("cloud", MIN_JOB_AGE)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (QUEUE_URL_ENV, f"{QUEUE_URL_ENV} is not set; it must name the intake queue's URL"),
        (TABLE_ENV, f"{TABLE_ENV} is not set; it must name the intake table"),
        (SPEC_ENV, f"{SPEC_ENV} is not set; it must name the cluster spec JSON"),
    ],
)
def test_a_missing_setting_is_one_line_and_exit_2(
    missing: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    env = {QUEUE_URL_ENV: "https://q", TABLE_ENV: "t", SPEC_ENV: cluster_spec().to_json()}
    for name, value in env.items():
        if name == missing:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert drain.main(["--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"relion-spot intake: {message}")
    assert err.count("\n") == 1


def test_a_bad_job_mode_is_refused() -> None:
    with pytest.raises(IntakeConfigError, match="'gpu' is not valid: one of cloud, local"):
        DrainSettings.from_env(
            {
                QUEUE_URL_ENV: "q",
                TABLE_ENV: "t",
                SPEC_ENV: cluster_spec().to_json(),
                "RELION_SPOT_INTAKE_JOB_MODE": "gpu",
            }
        )


# Staging from S3: only the buckets the nodes may read (setting stage_buckets).


def _stage_message(source: str) -> str:
    return json.dumps(
        {
            "version": 1,
            "submission_id": SID,
            "template": "stage",
            "parameters": {"source": source},
            "user": "alice",
            "submitted_at": "2026-11-03T10:15:00Z",
        }
    )


def test_staging_from_a_granted_bucket_is_submitted(intake: Intake) -> None:
    prepare = JobPreparer.from_spec(cluster_spec(), stage_buckets=("lab-raw", "lab.archive"))
    intake.send(_stage_message("s3://lab.archive/relion_benchmark.tar.gz"))
    assert intake.drainer(prepare=prepare).step() == ["accepted"]
    assert "--source s3://lab.archive/relion_benchmark.tar.gz" in intake.slurm.script("42")


@pytest.mark.parametrize(
    ("buckets", "allowed"), [(("lab-raw",), "lab-raw"), ((), "none")], ids=["other", "none"]
)
def test_staging_from_a_bucket_the_nodes_cannot_read_is_refused_before_any_node(
    intake: Intake, buckets: tuple[str, ...], allowed: str
) -> None:
    prepare = JobPreparer.from_spec(cluster_spec(), stage_buckets=buckets)
    intake.send(_stage_message("s3://someone-elses/bench.tar.gz"))
    assert intake.drainer(prepare=prepare).step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None
    assert record.message == (
        "parameter source = 's3://someone-elses/bench.tar.gz' is not valid: bucket "
        f"'someone-elses' is not one the nodes may read (this cluster's stage_buckets: "
        f"{allowed}); deploy with -c stage_buckets=<buckets> to grant it"
    )
    assert intake.slurm.sbatch_calls() == []


def _dataset_message(dataset: str) -> str:
    return json.dumps(
        {
            "version": 1,
            "submission_id": SID,
            "template": "class3d",
            "parameters": {"preset": "benchmark", "dataset": dataset},
            "user": "alice",
            "submitted_at": "2026-11-03T10:15:00Z",
        }
    )


def test_a_class3d_from_a_dataset_in_a_granted_bucket_runs_from_scratch(intake: Intake) -> None:
    """Its data is in S3, not on /data: accepted with the node's checks named, and the script
    copies the set to scratch before RELION, which then needs no --scratch_dir copy."""
    prepare = JobPreparer.from_spec(cluster_spec(), stage_buckets=("lab-raw",))
    intake.send(_dataset_message("s3://lab-raw/sets/relion_benchmark.tar.gz"))
    assert intake.drainer(prepare=prepare).step() == ["accepted"]
    script = intake.slurm.script("42")
    assert "-m relion_spot.jobs.dataset --source s3://lab-raw/sets/relion_benchmark.tar.gz" in (
        script
    )
    assert '--pwd "$DATASET"' in script and "--scratch_dir" not in script
    record = intake.table.get(SID)
    assert record is not None and record.message is not None
    assert record.message.startswith("preflight on the node: the data set s3://lab-raw/")


def test_a_class3d_from_a_dataset_in_a_bucket_the_nodes_cannot_read_is_refused(
    intake: Intake,
) -> None:
    prepare = JobPreparer.from_spec(cluster_spec(), stage_buckets=("lab-raw",))
    intake.send(_dataset_message("s3://someone-elses/set.tar"))
    assert intake.drainer(prepare=prepare).step() == ["rejected"]
    record = intake.table.get(SID)
    assert record is not None and record.message is not None
    assert record.message.startswith(
        "parameter dataset = 's3://someone-elses/set.tar' is not valid: bucket 'someone-elses'"
    )
    assert intake.slurm.sbatch_calls() == []


def test_staging_over_https_needs_no_bucket(intake: Intake) -> None:
    prepare = JobPreparer.from_spec(cluster_spec(), stage_buckets=())
    intake.send(_stage_message("https://example.org/relion_benchmark.tar.gz"))
    assert intake.drainer(prepare=prepare).step() == ["accepted"]


def test_stage_buckets_come_from_the_environment() -> None:
    base = {QUEUE_URL_ENV: "https://q", TABLE_ENV: "t", SPEC_ENV: cluster_spec().to_json()}
    assert DrainSettings.from_env(base).stage_buckets is None
    assert DrainSettings.from_env({**base, STAGE_BUCKETS_ENV: ""}).stage_buckets == ()
    assert DrainSettings.from_env({**base, STAGE_BUCKETS_ENV: "a-b,c.d"}).stage_buckets == (
        "a-b",
        "c.d",
    )


def test_blush_on_the_projects_own_image_is_refused_before_any_node() -> None:
    """The project's RELION image carries no PyTorch or Blush weights: RELION would fail on a
    paid GPU node, so the intake says so at once; a lab's own image is trusted to have them."""
    from relion_spot.intake.prepare import JobRejected
    from relion_spot.jobs import from_mapping

    params = from_mapping({"preset": "benchmark", "extra_flags": ["--blush"]})
    with pytest.raises(JobRejected, match="--blush needs RELION's Blush environment"):
        JobPreparer.from_spec(cluster_spec())(params)
    own = JobPreparer.from_spec(cluster_spec(), image="docker://lab/relion-blush:5.0.1")
    assert "--blush" in own(params).script
