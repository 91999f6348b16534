"""The subset-selection job's script and parameters: CPU partition, requeueable, checked values."""

from __future__ import annotations

import subprocess

import pytest

from relion_spot.intake.message import InvalidSubmission, new_submission, parse
from relion_spot.jobs.parameters import JobParameterError
from relion_spot.jobs.select import SelectParams, render_select, select_from_mapping

GIVEN = {"project_dir": "/data/lab", "run": "Class3D/job005", "classes": [1, 3]}


def test_the_script_claims_a_select_job_on_the_cpu_partition_and_runs_the_program() -> None:
    script = render_select(select_from_mapping({**GIVEN, "iteration": 20}))
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --requeue" in script
    assert "--gres" not in script and "#SBATCH --chdir=/data/lab" in script
    assert "relion_spot.jobs.claim --type Select)" in script
    assert "exec /opt/relion-spot/venv/bin/python -I -m relion_spot.intake.report --run" in script
    assert script.rstrip().endswith(
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.relion.select "
        '--run Class3D/job005 --classes 1,3 --iteration 20 --out "$JOB_DIR"'
    )
    assert "$$" not in script and "${" not in script.replace("${SLURM_RESTART_COUNT:-0}", "")
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout


def test_a_command_lines_text_and_a_messages_list_give_the_same_selection() -> None:
    from_cli = select_from_mapping({**GIVEN, "classes": "1,3", "iteration": "20"})
    from_message = select_from_mapping({**GIVEN, "iteration": 20})
    assert from_cli == from_message == SelectParams("/data/lab", "Class3D/job005", (1, 3), 20)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"run": "Class3D/job005", "classes": [1]}, "a selection needs project_dir"),
        ({**GIVEN, "classes": "1;rm -rf /"}, "parameter classes = '1;rm -rf /' is not valid"),
        ({**GIVEN, "classes": [0]}, "parameter classes = '(0,)' is not valid: class numbers"),
        ({**GIVEN, "classes": [51]}, "is not valid: class numbers from 1 to 50"),
        ({**GIVEN, "classes": []}, "parameter classes = '()' is not valid"),
        ({**GIVEN, "classes": [True]}, "parameter classes = '(True,)' is not valid"),
        ({**GIVEN, "run": "../Class3D/job005"}, "parameter run = '../Class3D/job005' is not valid"),
        ({**GIVEN, "run": "Class3D/job005/run"}, "a job directory of the project, e.g."),
        ({**GIVEN, "run": "-rf"}, "parameter run = '-rf' is not valid"),
        ({**GIVEN, "project_dir": "/etc"}, "parameter project_dir = '/etc' is not valid"),
        ({**GIVEN, "project_dir": "/data/.relion-spot"}, "are the cluster's own"),
        ({**GIVEN, "iteration": 0}, "parameter iteration = '0' is not valid"),
        ({**GIVEN, "iteration": "last"}, "parameter iteration = 'last' is not valid"),
        ({**GIVEN, "K": 2}, "parameter 'K' is not known for a selection: one of project_dir"),
    ],
)
def test_bad_values_are_one_clear_message(values: dict, message: str) -> None:
    with pytest.raises(JobParameterError) as refused:
        select_from_mapping(values)
    assert message in str(refused.value)


def test_a_selection_travels_the_intake_queue_and_a_bad_one_is_refused_by_the_same_check() -> None:
    sent = new_submission(GIVEN, user="alice", template="select")
    received = parse(sent.to_json())
    assert received.params == SelectParams("/data/lab", "Class3D/job005", (1, 3))
    with pytest.raises(InvalidSubmission, match="parameter classes"):
        new_submission({**GIVEN, "classes": "x"}, user="alice", template="select")
