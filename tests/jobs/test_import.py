"""The import job's script and parameters: CPU partition, requeueable, the broker's socket, a
project under /data and nothing else."""

from __future__ import annotations

import subprocess

import pytest

from relion_spot.intake.message import InvalidSubmission, new_submission, parse
from relion_spot.jobs.imports import ImportParams, import_from_mapping, render_import
from relion_spot.jobs.parameters import JobParameterError

from .test_class3d import _golden

DIGEST = "ab" * 32
GOOD = {"project_dir": "/data/lab", "manifest_sha256": DIGEST}


def test_the_script_matches_golden_and_is_clean_shell() -> None:
    script = render_import(import_from_mapping(GOOD))
    _golden("import.sbatch", script)
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --requeue" in script
    assert "--gres" not in script
    assert script.rstrip().endswith(
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.exchange import --project-dir "
        f"/data/lab --s3-credentials /run/relion-spot/stage-credentials.sock --manifest-sha256 "
        f"{DIGEST}"
    )
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "an import needs project_dir, manifest_sha256"),
        ({"project_dir": "/data/p"}, "an import needs manifest_sha256"),
        ({**GOOD, "project_dir": "/etc"}, "parameter project_dir = '/etc' is not valid"),
        ({**GOOD, "project_dir": "/data"}, "is not valid: a directory under /data"),
        ({**GOOD, "project_dir": "/data/a/../b"}, "is not valid"),
        ({**GOOD, "project_dir": "/data/.relion-spot"}, "are the cluster's own"),
        ({**GOOD, "manifest_sha256": "AB" * 32}, "manifest_sha256 = 'ABAB"),
        ({**GOOD, "manifest_sha256": 5}, "parameter manifest_sha256 = '5' is not valid"),
        ({**GOOD, "source": "s3://x/y"}, "'source' is not known for an import"),
    ],
)
def test_bad_values_are_one_clear_message(values: dict, message: str) -> None:
    with pytest.raises(JobParameterError) as refused:
        import_from_mapping(values)
    assert message in str(refused.value)


def test_an_import_travels_the_intake_queue_and_a_bad_one_is_refused_by_the_same_check() -> None:
    sent = new_submission(GOOD, user="alice", template="import")
    assert parse(sent.to_json()).params == ImportParams("/data/lab", DIGEST)
    with pytest.raises(InvalidSubmission, match="parameter project_dir"):
        new_submission({**GOOD, "project_dir": "/tmp"}, user="alice", template="import")
