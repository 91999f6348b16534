"""The staging job's script: CPU partition, requeueable, the fetch command with checked values."""

from __future__ import annotations

import subprocess

import pytest

from relion_spot.jobs.parameters import JobParameterError
from relion_spot.jobs.stage import StageParams, render_stage, stage_from_mapping
from relion_spot.staging import BENCHMARK_URL


def test_default_stages_the_benchmark_on_the_cpu_partition() -> None:
    script = render_stage(StageParams())
    assert "#SBATCH --partition=cpu" in script
    assert "#SBATCH --requeue" in script
    assert script.rstrip().endswith(
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.staging fetch "
        f"--dest /data/relion_benchmark --source "
        f"{BENCHMARK_URL}"
    )
    assert "exec /opt/relion-spot/venv/bin/python -I -m relion_spot.intake.report --run" in script
    assert "$$" not in script and "${" not in script.replace("${SLURM_RESTART_COUNT:-0}", "")
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout


def test_checks_and_optional_values_reach_the_command() -> None:
    params = stage_from_mapping(
        {"dest": "/data/bench", "sha256": "a" * 64, "expect_files": 12, "source": "s3://lab-b/k"}
    )
    assert f"--sha256 {'a' * 64} --expect-files 12" in render_stage(params)


def test_an_s3_source_reads_with_the_nodes_broker_and_an_http_one_does_not() -> None:
    """The job holds no instance credentials: s3:// goes through the root broker's socket."""
    from_s3 = render_stage(stage_from_mapping({"source": "s3://lab-data/bench.tar.gz"}))
    assert from_s3.rstrip().endswith(
        "--source s3://lab-data/bench.tar.gz "
        "--s3-credentials /run/relion-spot/stage-credentials.sock"
    )
    assert "--s3-credentials" not in render_stage(StageParams()).rstrip().splitlines()[-1]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dest": "/data"}, "dest = '/data' is not valid: a directory under /data"),
        ({"dest": "/data/../etc"}, "dest = '/data/../etc'"),
        ({"dest": "relative"}, "dest = 'relative'"),
        ({"source": "file:///x"}, "source = 'file:///x' is not valid"),
        ({"sha256": "xyz"}, "sha256 = 'xyz' is not valid: 64 lowercase hex digits"),
        ({"expect_files": 0}, "expect_files = 0 is not valid"),
        ({"desk": "/data/x"}, "parameter 'desk' is not known for staging: one of dest, source"),
    ],
)
def test_bad_values_are_named(values: dict, message: str) -> None:
    with pytest.raises(JobParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stage_from_mapping(values)
