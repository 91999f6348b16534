"""The export job's script and parameters: CPU partition, requeueable, the broker's socket, checked
values, and the same check on both sides of the intake queue."""

from __future__ import annotations

import subprocess

import pytest

from relion_spot.intake.message import InvalidSubmission, new_submission, parse
from relion_spot.jobs.export import ExportParams, export_from_mapping, render_export
from relion_spot.jobs.parameters import JobParameterError

from .test_class3d import _golden

A = "11111111-2222-4333-8444-555555555555"
B = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
GIVEN = {"project_dir": "/data/lab", "submissions": [A, B]}


def test_the_script_matches_golden_and_is_clean_shell() -> None:
    script = render_export(export_from_mapping(GIVEN))
    _golden("export.sbatch", script)
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --requeue" in script
    assert "--gres" not in script and "#SBATCH --chdir=/data/lab" in script
    assert script.rstrip().endswith(
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.exchange export --project-dir "
        f"/data/lab --submission {A} --submission {B} "
        "--s3-credentials /run/relion-spot/stage-credentials.sock"
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"submissions": [A]}, "an export needs project_dir"),
        ({"project_dir": "/data/lab"}, "an export needs submissions"),
        ({**GIVEN, "submissions": []}, "1 to 10 different submission ids"),
        ({**GIVEN, "submissions": [A, A]}, "1 to 10 different submission ids"),
        ({**GIVEN, "submissions": [B.upper()]}, "is not valid: 1 to 10"),
        ({**GIVEN, "submissions": ["--help"]}, "is not valid: 1 to 10"),
        ({**GIVEN, "submissions": "x" * 36}, "is not valid: 1 to 10"),
        ({**GIVEN, "submissions": [A] * 11}, "is not valid"),
        ({**GIVEN, "project_dir": "/etc"}, "parameter project_dir = '/etc' is not valid"),
        ({**GIVEN, "project_dir": "/data/../etc"}, "is not valid"),
        ({**GIVEN, "project_dir": "/data/.relion-spot"}, "are the cluster's own"),
        ({**GIVEN, "bucket": "elsewhere"}, "parameter 'bucket' is not known for an export"),
    ],
)
def test_bad_values_are_one_clear_message(values: dict, message: str) -> None:
    with pytest.raises(JobParameterError) as refused:
        export_from_mapping(values)
    assert message in str(refused.value)


def test_an_export_travels_the_intake_queue_and_a_bad_one_is_refused_by_the_same_check() -> None:
    sent = new_submission(GIVEN, user="alice", template="export")
    assert parse(sent.to_json()).params == ExportParams("/data/lab", (A, B))
    with pytest.raises(InvalidSubmission, match="parameter submissions"):
        new_submission({**GIVEN, "submissions": ["x"]}, user="alice", template="export")
