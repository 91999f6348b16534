"""``relion-spot stage`` and ``pull``: every bad input is one line and a non-zero exit, and nothing
reaches the intake queue or the exchange bucket (the round trip itself runs on the embedded
cloud: tests/local/test_campaign.py)."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from relion_spot import __version__
from relion_spot.cli import main
from relion_spot.intake.table import ACCEPTED, SUBMITTING, Record

from .conftest import COSTS, RECORDS, REGION, STACK, TABLE, Cluster

EXCHANGE_STACK = "lab-x"
BUCKET = "lab-x-exchange"
STAGED = "3f0c7a1e-2b3d-4c5e-8f90-a1b2c3d4e5f6"


@pytest.fixture
def exchange(cluster: Cluster, tmp_path: Path) -> Cluster:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cluster.add_stack(
            EXCHANGE_STACK,
            {
                "ClusterName": EXCHANGE_STACK,
                "Version": __version__,
                "IntakeQueueUrl": cluster.queue_url,
                "IntakeTable": TABLE,
                "JobCostsTable": COSTS,
                "JobRecordsTable": RECORDS,
                "ExchangeBucket": BUCKET,
            },
        )
    record = Record(
        submission_id=STAGED, state=SUBMITTING, template="stage", claimed_at=1,
        parameters='{"dest": "/data/bench"}',
    )  # fmt: skip
    cluster.table.claim(record)
    cluster.table.finish(replace(record, state=ACCEPTED, job_id="7", decided_at=2))
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "particles.star").write_text("data_\n")
    return cluster


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["stage", "{tmp}/nope", "--project-dir", "/data/p"],
            "relion-spot stage: {tmp}/nope is not a folder",
        ),
        (
            ["stage", "{tmp}/lab", "--project-dir", "/etc"],
            "relion-spot stage: parameter project_dir = '/etc' is not valid: a directory under "
            "/data (absolute, no . or .. or empty parts)",
        ),
        (
            ["stage", "{tmp}/lab", "--project-dir", "/data/p", "--stack", STACK],
            f"relion-spot stage: stack {STACK} has no exchange bucket (deployed by an older "
            "version): deploy this version to stage a folder",
        ),
        (
            ["stage", "s3://", "--project-dir", "/data/p"],
            "relion-spot stage: parameter source = 's3://' is not valid: an http(s):// URL or "
            "s3://bucket/key (ASCII letters, digits and _ . / + @ = - in the key)",
        ),
        (
            ["pull", "abc", "-o", "{tmp}/out"],
            "relion-spot pull: 'abc' is neither a Slurm job id nor a submission id (a UUID)",
        ),
        (
            ["pull", "99", "-o", "{tmp}/out"],
            f"relion-spot pull: no job 99 among the submissions of {EXCHANGE_STACK} (stack "
            f"{EXCHANGE_STACK})",
        ),
        (
            ["pull", "7", "-o", "{tmp}/out"],
            f"relion-spot pull: submission {STAGED} is a stage job: pull takes a Class3D, a "
            "selection, a campaign or one of its steps",
        ),
        (
            ["pull", "7", "-o", "{tmp}/out", "--stack", STACK],
            f"relion-spot pull: stack {STACK} has no results exchange (deployed by an older "
            "version): deploy this version to pull results",
        ),
        (["pull", "7"], None),
        (["stage", "{tmp}/lab"], None),
    ],
    ids=[
        "missing-folder", "project-outside-data", "old-stack-stage", "s3-nothing", "not-an-id",
        "unknown-job", "stage-job", "old-stack-pull", "no-output", "no-project",
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_sends_nothing(
    exchange: Cluster, capsys: Any, tmp_path: Path, argv: list[str], expected: str | None
) -> None:
    words = [w.replace("{tmp}", str(tmp_path)) for w in argv]
    if "--stack" not in words:
        words += ["--stack", EXCHANGE_STACK]
    if expected is None:  # argparse's own refusal
        with pytest.raises(SystemExit) as exited:
            main(words)
        assert exited.value.code == 2
    else:
        assert main(words) in (1, 2)
    lines = capsys.readouterr().err.strip().splitlines()
    if expected is not None:
        assert lines == [expected.replace("{tmp}", str(tmp_path))]
    else:
        assert lines[-1].startswith("relion-spot") and "required" in lines[-1]
    assert exchange.sqs.receive_message(QueueUrl=exchange.queue_url).get("Messages") is None
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)
    assert "Contents" not in listed


def test_a_folder_of_hidden_files_only_is_refused_before_any_upload(
    exchange: Cluster, capsys: Any, tmp_path: Path
) -> None:
    """Hidden names (.DS_Store, a planted claim) are never staged; with nothing else, nothing."""
    lab = tmp_path / "hidden-only"
    lab.mkdir()
    (lab / ".relion-spot-job.json").write_text("{}")
    argv = ["stage", str(lab), "--project-dir", "/data/p", "--stack", EXCHANGE_STACK]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"relion-spot stage: {lab} holds no files"
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)
    assert "Contents" not in listed
