"""The Slurm job record writer: hostlists, Slurm's environment, and the program's exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relion_spot.cost import config, jobcomp
from relion_spot.cost.hostlist import HostlistError, expand
from relion_spot.cost.jobcomp import SlurmRecordError, attempt_from_slurm
from relion_spot.cost.store import JOB_KEY, deserialize, is_bucket_key

from .conftest import CLUSTER, RECORDS, Account, slurm_env, write_attempt


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("gpu-1", ["gpu-1"]),
        ("gpu-[1-3,7]", ["gpu-1", "gpu-2", "gpu-3", "gpu-7"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("a[1-2]b[1-2],c", ["a1b1", "a1b2", "a2b1", "a2b2", "c"]),
        ("gpu-1,gpu-1", ["gpu-1"]),
        ("", []),
    ],
)
def test_hostlist_expansion(expression, names):
    assert expand(expression) == names


@pytest.mark.parametrize("expression", ["gpu-[1-", "gpu-[3-1]", "gpu-[a]", "gpu-1]"])
def test_bad_hostlists_are_refused(expression):
    with pytest.raises(HostlistError, match="hostlist"):
        expand(expression)


def test_slurm_environment_is_read():
    env = slurm_env("12", nodes="gpu-[1-2]", start=100, end=200, state="completed", procs=8)
    env["NODECNT"] = "2"
    attempt, nodes = attempt_from_slurm(env, CLUSTER)
    assert nodes == ["gpu-1", "gpu-2"]
    assert (attempt.job_id, attempt.start, attempt.end, attempt.state) == (
        "12",
        100,
        200,
        "COMPLETED",
    )
    assert (attempt.cpus, attempt.node_count, attempt.user) == (8, 2, "alice")


def test_an_attempt_ended_by_a_requeue_counts_as_requeued():
    env = slurm_env("14", nodes="gpu-1", start=100, end=160, state="PENDING", procs=4)
    attempt, _ = attempt_from_slurm(env, CLUSTER)
    assert attempt.state == "REQUEUED"
    assert attempt.reclaimed


def test_job_that_never_ran_writes_nothing(account: Account):
    env = slurm_env("13", nodes="", start=0, end=500, state="CANCELLED", procs=0)
    assert write_attempt(account, env) == "not-run"
    assert account.dynamodb.scan(TableName=RECORDS)["Count"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"JOBID": "abc"}, "JOBID='abc'"),
        ({"START": "soon"}, "START='soon'"),
        ({"END": "5"}, "END=5 is before START=100"),
        ({"JOBSTATE": ""}, "JOBSTATE is empty"),
    ],
)
def test_bad_slurm_values_are_named(change, message):
    env = {**slurm_env("12", nodes="gpu-1", start=100, end=200, state="FAILED", procs=1), **change}
    with pytest.raises(SlurmRecordError, match=message):
        attempt_from_slurm(env, CLUSTER)


def run_writer(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELION_SPOT_")}
    return subprocess.run(
        [sys.executable, "-m", "relion_spot.cost.jobcomp"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_program_exits_non_zero_with_one_clear_line(tmp_path):
    settings = tmp_path / "cost.env"
    settings.write_text(
        f"# written at deploy\n{config.CLUSTER}={CLUSTER}\n{config.RECORDS_TABLE}=t\n"
        "AWS_DEFAULT_REGION=us-east-1\n"
    )
    env = slurm_env("x1", nodes="gpu-1", start=1, end=2, state="COMPLETED", procs=1)
    result = run_writer({**env, config.CONFIG_FILE_VARIABLE: str(settings)})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "relion-spot jobcomp: JOBID='x1': expected Slurm's numeric job id"
    )

    result = run_writer({**env, config.CONFIG_FILE_VARIABLE: str(tmp_path / "missing")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "RELION_SPOT_COST_CONFIG=" in result.stderr and "no such file" in result.stderr


def test_config_file_does_not_override_the_environment(tmp_path):
    settings = tmp_path / "cost.env"
    settings.write_text(f"export {config.CLUSTER}=from-file\n{config.RECORDS_TABLE}='r'\n")
    environ = {config.CLUSTER: "from-env", config.CONFIG_FILE_VARIABLE: str(settings)}
    config.seed_environment(environ)
    loaded = config.CostConfig.from_env(environ, need_costs=False)
    assert (loaded.cluster, loaded.records_table) == ("from-env", "r")
    with pytest.raises(config.ConfigError, match="RELION_SPOT_COSTS_TABLE is not set"):
        config.CostConfig.from_env(environ)
    with pytest.raises(config.ConfigError, match="expected a positive number"):
        config.CostConfig.from_env({**environ, config.WINDOW_HOURS: "-3"}, need_costs=False)


@pytest.mark.parametrize(
    "raw",
    [
        "lt-1",
        '{"launch_template_id": "lt-1"}',
        '[{"tags": {}}]',
        '[{"launch_template_id": "lt-1", "tags": {"k": 1}}]',
    ],
)
def test_bad_launch_template_setting_is_named(raw):
    environ = {config.CLUSTER: "c", config.RECORDS_TABLE: "r", config.LAUNCH_TEMPLATES: raw}
    with pytest.raises(config.ConfigError, match="RELION_SPOT_LAUNCH_TEMPLATES"):
        config.CostConfig.from_env(environ, need_costs=False)


def test_unreachable_table_spools_the_attempt_and_the_next_run_writes_it(account, tmp_path):
    account.launch(node="gpu-1")
    spool = tmp_path / "spool"
    spool.mkdir()
    first = {
        **slurm_env("51", nodes="gpu-1", start=100, end=900, state="COMPLETED", procs=4),
        jobcomp.SPOOL_VARIABLE: str(spool),
    }
    offline = config.CostConfig.from_env(
        {**account.environ, config.RECORDS_TABLE: "not-created-yet"}, need_costs=False
    )
    assert jobcomp.record(first, offline, (account.ec2, account.dynamodb)) == "spooled"
    assert [p.name for p in spool.iterdir()] == ["51-0000000100.json"]

    second = {**first, "JOBID": "52", "START": "1000", "END": "1500"}
    online = config.CostConfig.from_env(account.environ, need_costs=False)
    assert jobcomp.record(second, online, (account.ec2, account.dynamodb)) == "written"
    assert list(spool.iterdir()) == []
    stored = {
        deserialize(i)[JOB_KEY]
        for i in account.dynamodb.scan(TableName=RECORDS)["Items"]
        if not is_bucket_key(deserialize(i)[JOB_KEY])
    }
    assert stored == {f"{CLUSTER}#51", f"{CLUSTER}#52"}
