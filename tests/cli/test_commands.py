"""The lab's commands against a cluster in moto: find the stack, submit (through a drainer step
run in this process), progress reported by the job, status, logs, plot, cancel, and every
bad input as one line and a non-zero exit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from relion_spot import __version__
from relion_spot.cli import main
from relion_spot.client import commands
from relion_spot.client.cluster import ClusterError, aws_errors
from relion_spot.intake.client import wait_for_decision
from relion_spot.intake.report import (
    JobReport,
    ProgressReporter,
    compact,
    expand,
    log_tail,
)
from relion_spot.relion.progress import Watcher

from .conftest import (
    CLUSTER,
    COSTS,
    REGION,
    STACK,
    TABLE,
    Cluster,
    NodeReports,
    job_log,
    node_instance_arn,
    node_reports,
    relay_report,
)


def _record(current: int, total: int = 5) -> dict[str, Any]:
    """A progress record as relion_spot.relion.progress.collect makes it."""
    rows = [
        {
            "iteration": i,
            "resolution_angstrom": 40.0 / i,
            "log_likelihood": 1e6 + i,
            "class_distribution": [0.5 + 0.05 * i, 0.5 - 0.05 * i],
            "changed_class_fraction": None if i == 1 else 0.5 / i,
            "seconds": 10.0,
            "after_resume": i == 3,
        }
        for i in range(1, current + 1)
    ]
    return {
        "run": "run",
        "updated": "2026-11-03T10:20:00+00:00",
        "requested_iterations": total,
        "current_iteration": current,
        "finished": current >= total,
        "resolution_angstrom": rows[-1]["resolution_angstrom"] if rows else None,
        "seconds_per_iteration": 10.0,
        "eta_seconds": 10.0 * (total - current),
        "resumes": 1,
        "resumed_from": [2],
        "iterations": rows,
    }


def _drain_while_waiting(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's wait for a decision runs one drain step each time it would sleep."""

    def waiting(table: Any, sid: str, timeout: float, **kwargs: Any) -> Any:
        kwargs["sleep"] = lambda _seconds: cluster.drainer().step()
        return wait_for_decision(table, sid, timeout, **kwargs)

    monkeypatch.setattr(commands.intake_client, "wait_for_decision", waiting)


def _submit(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    """``relion-spot submit class3d``, with one drain step run while it waits."""

    _drain_while_waiting(cluster, monkeypatch)
    return main(
        ["submit", "class3d", "--stack", STACK, "--user", "alice", "--preset", "benchmark", *extra]
    )


def _accepted(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> str:
    assert _submit(cluster, monkeypatch, "--K", "2", "--iter", "5") == 0
    return capsys.readouterr().out.strip()


def _status_json(capsys: Any, *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["status", "--stack", STACK, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_submit_goes_through_the_queue_and_prints_the_job_id(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert _submit(cluster, monkeypatch, "--K", "4", "--iter", "30", "--no-ctf") == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "42"
    assert "accepted: Slurm job 42" in captured.err
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    sid = item["submission_id"]["S"]
    assert json.loads(item["parameters"]["S"]) == {
        "preset": "benchmark", "K": 4, "iter": 30, "ctf": False,
    }  # fmt: skip
    # The job learns its submission and where to report from sbatch's environment.
    (env,) = cluster.slurm.sbatch_environments()
    assert {
        f"RELION_SPOT_SUBMISSION_ID={sid}",
        f"RELION_SPOT_INTAKE_TABLE={TABLE}",
        f"RELION_SPOT_INTAKE_REGION={REGION}",
    } <= set(env.split())
    script = cluster.slurm.script("42")
    assert "--K 4" in script and "--iter 30" in script and "--ctf " not in script


def _with_controller(cluster: Cluster, service: str) -> str:
    """A stack like the fixture's that also names its controller's ECS service."""
    import warnings

    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cluster.cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]
    }
    with warnings.catch_warnings():  # moto does not model the placeholder resource
        warnings.simplefilter("ignore", UserWarning)
        cluster.add_stack(
            "lab-gpu1-asleep",
            {**outputs, "EcsClusterName": CLUSTER, "ControllerServiceName": service},
        )
    return "lab-gpu1-asleep"


def test_submit_wakes_a_sleeping_controller_and_says_so(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family="ctl", containerDefinitions=[{"name": "slurmctld", "image": "x", "memory": 512}]
    )
    ecs.create_service(cluster=CLUSTER, serviceName=f"{CLUSTER}-controller",
                       taskDefinition="ctl", desiredCount=0)  # fmt: skip
    stack = _with_controller(cluster, f"{CLUSTER}-controller")
    _drain_while_waiting(cluster, monkeypatch)
    assert main(["submit", "class3d", "--stack", stack, "--preset", "benchmark"]) == 0
    assert "the controller was asleep: waking it" in capsys.readouterr().err
    (service,) = ecs.describe_services(cluster=CLUSTER, services=[f"{CLUSTER}-controller"])[
        "services"
    ]
    assert service["desiredCount"] == 1


def test_a_wake_that_fails_leaves_the_submission_to_the_wake_check(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    stack = _with_controller(cluster, "no-such-service")
    _drain_while_waiting(cluster, monkeypatch)
    assert main(["submit", "class3d", "--stack", stack, "--preset", "benchmark"]) == 0
    err = capsys.readouterr().err
    assert "could not wake the controller (" in err
    assert "the cluster's wake check tries every five minutes" in err
    assert "accepted: Slurm job" in err


def test_submit_select_runs_the_selection_program_on_the_cpu_partition(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _drain_while_waiting(cluster, monkeypatch)
    argv = ["submit", "select", "--stack", STACK, "--project-dir", "/data/lab"]
    assert main([*argv, "--run", "Class3D/job005", "--classes", "1,3"]) == 0
    assert capsys.readouterr().out.strip() == "42"
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    assert item["template"]["S"] == "select"
    assert json.loads(item["parameters"]["S"]) == {
        "project_dir": "/data/lab", "run": "Class3D/job005", "classes": [1, 3],
    }  # fmt: skip
    script = cluster.slurm.script("42")
    assert "#SBATCH --partition=cpu" in script
    assert "relion_spot.relion.select --run Class3D/job005 --classes 1,3 --out" in script
    assert main([*argv, "--run", "Class3D/job005", "--classes", "1,x"]) == 2
    assert "parameter classes = '1,x' is not valid" in capsys.readouterr().err


def test_submit_synthetic_makes_a_set_with_the_clusters_image_on_the_cpu_partition(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _drain_while_waiting(cluster, monkeypatch)
    argv = ["submit", "synthetic", "--stack", STACK, "--project-dir", "/data/try"]
    assert main([*argv, "--classes", "3", "--particles-per-class", "50"]) == 0
    assert capsys.readouterr().out.strip() == "42"
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    assert item["template"]["S"] == "synthetic"
    assert json.loads(item["parameters"]["S"]) == {
        "project_dir": "/data/try", "classes": 3, "particles_per_class": 50, "seed": 0,
    }  # fmt: skip
    script = cluster.slurm.script("42")
    assert "#SBATCH --partition=cpu" in script and "--gres" not in script
    assert "relion-image.sh" in script  # the cluster's RELION image, as its GPU jobs run it
    assert "relion_spot.relion.synthetic --out /data/try" in script
    assert "--classes 3 --particles-per-class 50 --seed 0" in script
    for bad, message in [
        (["--classes", "0"], "parameter classes=0: must be between 1 and 50"),
        (["--particles-per-class", "x"], "parameter particles_per_class = 'x' is not valid"),
        (["--particles-per-class", "20000"], "at most 20000 particles"),
    ]:
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_submit_campaign_is_one_submission_and_three_jobs_each_after_the_one_before(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _drain_while_waiting(cluster, monkeypatch)
    argv = ["submit", "campaign", "--stack", STACK, "--preset", "benchmark", "--K", "3"]
    assert main([*argv, "--refine-class", "2", "--local-healpix-order", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "42"
    assert "then refine3d as Slurm job 43" in captured.err
    assert "postprocess as Slurm job 44" in captured.err
    items = {i["template"]["S"]: i for i in cluster.dynamodb.scan(TableName=TABLE)["Items"]}
    assert sorted(items) == ["campaign", "postprocess", "refine3d"]
    assert json.loads(items["campaign"]["parameters"]["S"]) == {
        "preset": "benchmark", "K": 3, "refine_class": "2", "local_healpix_order": 3,
    }  # fmt: skip
    assert "--auto_local_healpix_order 3" in cluster.slurm.script("43")
    assert "--class 2" in cluster.slurm.script("43")
    (campaign,) = [r for r in _status_json(capsys) if r["template"] == "campaign"]
    assert campaign["campaign"]["state"] == "class3d queued"
    assert [s["job_id"] for s in campaign["campaign"]["steps"]] == ["42", "43", "44"]
    sid = campaign["submission_id"]
    steps = {s["step"]: s["submission_id"] for s in campaign["campaign"]["steps"]}
    relay_report("42", sid, JobReport(compact({}, state="FINISHED", job_id="42"), ""))
    relay_report("43", steps["refine3d"], JobReport(compact({}, state="RUNNING"), ""))
    (row,) = _status_json(capsys, sid)
    assert row["campaign"]["state"] == "refine3d running"
    relay_report("43", steps["refine3d"], JobReport(compact({}, state="FINISHED"), ""))
    figures = {"resolution_angstrom": 14.55, "truth_resolution_angstrom": 16.0, "bfactor": 0.0}
    relay_report("44", steps["postprocess"], JobReport(compact(figures, state="FINISHED"), ""))
    (row,) = _status_json(capsys, sid)
    assert {k: row["campaign"][k] for k in ("state", *figures)} == {"state": "finished", **figures}
    assert main(["status", "--stack", STACK]) == 0
    assert "campaign: finished" in capsys.readouterr().out
    for bad, message in [
        (["--refine-class", "worst"], "parameter refine_class = 'worst' is not valid"),
        (["--local-healpix-order", "x"], "parameter local_healpix_order = 'x' is not valid"),
        (["--continue-from", "Class3D/job005"], "is not valid in a campaign"),
    ]:
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(("status", "shown"), [(0, "finished"), (3, "failed")])
def test_a_cpu_jobs_last_word_reaches_status_through_the_epilogs_flush(
    cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    tmp_path: Path,
    status: int,
    shown: str,
) -> None:
    """A CPU job (synthetic, select, stage) reports its end state as its last word; the Epilog
    forwards that one job's report at once and leaves every other job's file to the poll."""
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    spool = _spool(tmp_path)
    (spool / "555.json").write_text("another job's report")
    log = tmp_path / f"synthetic-{job}.out"
    log.write_text("synthetic: attempt 0\n")
    env = {
        **os.environ,
        "RELION_SPOT_SUBMISSION_ID": row["submission_id"],
        "RELION_SPOT_REPORT_SPOOL": str(spool),
        "RELION_SPOT_JOB_LOG": str(log),
        "SLURM_JOB_ID": job,
    }
    program = ["sh", "-c", f"echo made 200 particles >> {log}; exit {status}"]
    said = subprocess.run(
        [sys.executable, "-I", "-m", "relion_spot.intake.report", "--run", *program],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert said.returncode == status, said.stderr
    _forwarder(tmp_path, job, row["submission_id"]).flush()
    assert (spool / "555.json").read_text() == "another job's report"
    (after,) = _status_json(capsys, job)
    assert after["state"] == shown
    assert main(["logs", "--stack", STACK, job]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "made 200 particles"
    # A program Slurm stopped (a signal: cancel, requeue) has no end state: nothing reported.
    (spool / f"{job}.json").unlink()
    stopped = subprocess.run(
        [sys.executable, "-I", "-m", "relion_spot.intake.report", "--run", "sh", "-c", "kill $$"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert stopped.returncode == 128 + 15
    assert not (spool / f"{job}.json").exists()
    bad = subprocess.run(
        [sys.executable, "-I", "-m", "relion_spot.intake.report", "--state", "DONE"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'DONE'" in bad.stderr


def test_submit_dry_run_prints_the_controllers_findings_and_submits_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert _submit(cluster, monkeypatch, "--K", "4", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: nothing was submitted\n")
    assert "preflight skipped" in out  # this controller is not told where it sees /data
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    assert item["state"]["S"] == "estimated" and "job_id" not in item
    assert cluster.slurm.sbatch_environments() == []
    status = _status_json(capsys)
    assert [row["state"] for row in status] == ["estimated"]


def test_a_campaigns_dry_run_checks_all_three_steps_and_submits_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _drain_while_waiting(cluster, monkeypatch)
    argv = ["submit", "campaign", "--stack", STACK, "--preset", "benchmark", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: nothing was submitted\n")
    assert "then a 3D auto-refine of the best class (submission " in out
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    assert item["state"]["S"] == "estimated" and item["template"]["S"] == "campaign"
    assert cluster.slurm.sbatch_calls() == []


def test_submit_without_the_data_or_the_preset_names_what_is_missing_and_sends_nothing(
    cluster: Cluster, capsys: Any
) -> None:
    assert main(["submit", "class3d", "--stack", STACK, "--K", "4", "--no-wait"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relion-spot submit: the job's own data must be named: project_dir")
    assert "--particles" in err and "--preset benchmark" in err and "Traceback" not in err
    assert "Messages" not in cluster.sqs.receive_message(QueueUrl=cluster.queue_url)


def test_submit_no_wait_prints_the_submission_and_leaves_one_message(
    cluster: Cluster, capsys: Any
) -> None:
    assert main(["submit", "class3d", "--stack", STACK, "--preset", "benchmark", "--no-wait"]) == 0
    sid = capsys.readouterr().out.strip()
    messages = cluster.sqs.receive_message(QueueUrl=cluster.queue_url, MaxNumberOfMessages=10)
    (message,) = messages["Messages"]
    assert json.loads(message["Body"])["submission_id"] == sid


def test_a_rejection_prints_the_drainers_reason(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cluster.slurm.set("refuse", "Invalid partition name specified")
    assert _submit(cluster, monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "relion-spot submit: rejected: Slurm refused the job: Invalid partition name specified"
    )


def test_no_decision_in_time_says_the_controller_may_be_waking(
    cluster: Cluster, capsys: Any
) -> None:
    argv = ["submit", "class3d", "--stack", STACK, "--preset", "benchmark", "--timeout", "0.2"]
    argv += ["--poll", "0.05"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no decision within 0.2 s" in err and "waking up" in err


def _forwarder(tmp_path: Path, job: str, sid: str) -> NodeReports:
    """The node's forwarder for one intake job of this process's user, and the relay."""
    return node_reports(_spool(tmp_path), job, sid)


def _spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return spool


def test_progress_reported_by_the_job_shows_in_status_logs_and_plot(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys)
    assert (row["job_id"], row["state"], row["cost_usd"]) == (job, "queued", None)
    sid = row["submission_id"]

    env = {
        "RELION_SPOT_SUBMISSION_ID": sid,
        "RELION_SPOT_REPORT_SPOOL": str(_spool(tmp_path)),
        "SLURM_JOB_ID": job,
    }
    job_log(tmp_path, job, 100)
    reporter = ProgressReporter.from_env(env, cwd=tmp_path)
    assert reporter is not None and reporter.log_path == tmp_path / f"class3d-{job}.out"
    forwarder = _forwarder(tmp_path, job, sid)
    assert reporter.publish(_record(3), state="RUNNING")
    forwarder.round()
    assert reporter.publish(_record(3), state="RUNNING")  # the same iteration: one data point
    forwarder.round()
    # The dashboard's resolution graph: one point per new iteration, by cluster and job.
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    (metric,) = cloudwatch.list_metrics(Namespace="RelionSpot")["Metrics"]
    assert metric["MetricName"] == "ResolutionAngstrom"
    assert {d["Name"]: d["Value"] for d in metric["Dimensions"]} == {
        "Cluster": CLUSTER,
        "JobId": job,
    }
    assert forwarder.publisher._published_iteration == {job: 3}

    (row,) = _status_json(capsys, job)
    assert row["state"] == "running"
    assert (row["current_iteration"], row["requested_iterations"]) == (3, 5)
    assert row["resolution_angstrom"] == pytest.approx(40 / 3)
    assert row["eta_seconds"] == 20
    capsys.readouterr()
    assert main(["status", "--stack", STACK]) == 0
    table = capsys.readouterr().out
    assert "3/5" in table and "13.33 Å" in table and "running" in table

    assert main(["logs", "--stack", STACK, job]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "line 60" and lines[-1] == "line 99" and len(lines) == 40

    out = tmp_path / "convergence.png"
    assert main(["plot", "--stack", STACK, job, "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Priced: the cost table's estimate for <cluster>#<job> appears as the cost so far.
    cluster.dynamodb.put_item(
        TableName=COSTS,
        Item={
            "job": {"S": f"{CLUSTER}#{job}"},
            "cluster": {"S": CLUSTER},
            "first_start": {"N": "1"},
            "detail": {"S": json.dumps({"estimate_usd": 0.0125})},
        },
    )
    assert row["truth_accuracy"] is None  # a lab's own data: no truth to score against
    reporter.publish({**_record(5), "truth_accuracy": 0.955}, state="FINISHED")
    forwarder.round()
    (row,) = _status_json(capsys, sid)
    assert (row["state"], row["cost_usd"], row["current_iteration"]) == ("finished", 0.0125, 5)
    assert row["truth_accuracy"] == 0.955


def test_a_report_naming_another_submission_is_refused_and_that_item_is_kept(
    cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job that gives itself another submission's comment: the relay's update is
    conditioned on the item naming the reporting job, so the other item stays as it was."""
    victim_job = _accepted(cluster, monkeypatch, capsys)
    (victim,) = _status_json(capsys, victim_job)
    attacker_job = _accepted(cluster, monkeypatch, capsys)
    spool = _spool(tmp_path)
    env = {
        "RELION_SPOT_SUBMISSION_ID": victim["submission_id"],
        "RELION_SPOT_REPORT_SPOOL": str(spool),
        "SLURM_JOB_ID": attacker_job,
    }
    reporter = ProgressReporter.from_env(env, cwd=tmp_path)
    assert reporter is not None and reporter.publish(_record(4), state="FINISHED")
    forwarder = _forwarder(tmp_path, attacker_job, victim["submission_id"])
    caplog.set_level(logging.WARNING, logger="relion_spot.intake.relay")
    forwarder.round()
    assert (
        f"job {attacker_job}: report not relayed: submission {victim['submission_id']} holds "
        "another job" in caplog.text
    )
    (after,) = _status_json(capsys, victim_job)
    assert (after["state"], after.get("current_iteration")) == ("queued", None)


def test_the_watcher_reports_through_the_node_and_never_fails_the_job(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys)
    root = tmp_path / "Class3D" / f"job{job}" / "run"
    root.parent.mkdir(parents=True)
    spool = _spool(tmp_path)
    monkeypatch.setenv("RELION_SPOT_SUBMISSION_ID", row["submission_id"])
    monkeypatch.setenv("RELION_SPOT_REPORT_SPOOL", str(spool))
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.chdir(tmp_path)
    job_log(tmp_path, job, 3)
    # RELION exited before writing an iteration (e.g. a reclaim): the job's state is STOPPED.
    Watcher(root=root, requested_iterations=5, interval=0).refresh(final=True)
    _forwarder(tmp_path, job, row["submission_id"]).round()
    (row,) = _status_json(capsys, job)
    assert (row["state"], row["current_iteration"], row["requested_iterations"]) == (
        "stopped",
        0,
        5,
    )
    # The node's spool unusable (or any local failure): a warning, nothing raised.
    monkeypatch.setenv("RELION_SPOT_REPORT_SPOOL", str(tmp_path / "no-such-spool"))
    Watcher(root=root, requested_iterations=5, interval=0).refresh()
    assert "progress: not reported to the node" in capsys.readouterr().err


def test_cancel_round_trip(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == 0
    assert capsys.readouterr().out.strip() == f"job {job} cancelled"
    assert cluster.scancel_calls() == [job]
    (row,) = _status_json(capsys, job)
    assert row["state"] == "cancelled"
    assert main(["cancel", "--stack", STACK, job]) == 1
    assert "already cancelled" in capsys.readouterr().err


def test_a_report_saying_finished_does_not_keep_a_cancel_from_slurm(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A job's report reaches the table through its node: a node could write "FINISHED" into a
    running job's item. The cancel still goes to the controller, and Slurm decides."""
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    cluster.dynamodb.update_item(
        TableName=cluster.table.name,
        Key={"submission_id": {"S": row["submission_id"]}},
        UpdateExpression="SET progress = :p",
        ExpressionAttributeValues={":p": {"M": {"state": {"S": "FINISHED"}}}},
    )
    (row,) = _status_json(capsys, job)
    assert row["state"] == "finished"
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == 0
    assert cluster.scancel_calls() == [job]


def test_a_cancel_of_a_job_that_has_ended_is_refused_not_recorded_as_cancelled(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Slurm 24.11's scancel of an ended job says nothing and exits 0: the controller asks Slurm
    the job's state first, so a finished job stays finished."""
    job = _accepted(cluster, monkeypatch, capsys)
    cluster.slurm.set(f"state-{job}", "COMPLETED|None|(null)")
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == 1
    assert f"Slurm job {job} has already ended (COMPLETED)" in capsys.readouterr().err
    assert cluster.scancel_calls() == []
    record = cluster.table.get(_status_json(capsys, job)[0]["submission_id"])
    assert record is not None and record.cancel_state == "cancel-failed"


@pytest.mark.parametrize(
    ("state", "outcome"),
    [("FAILED+COMPLETING", 1), ("CANCELLED+COMPLETING", 1), ("PENDING+REQUEUED", 0),
     ("PENDING+COMPLETING", 0)],
)  # fmt: skip
def test_a_cancel_goes_by_the_jobs_base_state_not_its_flags(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any, state: str, outcome: int
) -> None:
    """squeue's %T named a flag for the state (COMPLETING for a job that failed, or that is being
    requeued); the base state says whether the job will run again, and so whether there is
    anything to cancel."""
    job = _accepted(cluster, monkeypatch, capsys)
    cluster.slurm.set(f"state-{job}", f"{state}|None|")
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == outcome
    base = state.split("+")[0]
    if outcome:
        assert f"Slurm job {job} has already ended ({base})" in capsys.readouterr().err
        assert cluster.scancel_calls() == []
    else:
        assert cluster.scancel_calls() == [job]


def test_a_nodes_report_item_is_no_submission_to_status(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A node's report for a submission that has no item (or no job on that node) stays in the
    node's own item: status lists no such submission, and no relay creates one."""
    job = _accepted(cluster, monkeypatch, capsys)
    planted = "0b4e2a9c-3f1d-4c8e-9a7b-6d5e4f3a2b1c"
    relay_report("99", planted, JobReport(compact({}, state="RUNNING"), "forged\n"))
    assert [row["job_id"] for row in _status_json(capsys)] == [job]
    assert main(["status", "--stack", STACK, planted]) != 0
    assert f"no submission {planted}" in capsys.readouterr().err
    keys = [i["submission_id"]["S"] for i in cluster.dynamodb.scan(TableName=TABLE)["Items"]]
    assert planted not in keys
    assert f"report:{node_instance_arn()}:{planted}" in keys


def test_a_cancel_slurm_refuses_is_reported(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    job = _accepted(cluster, monkeypatch, capsys)
    cluster.slurm.set("scancel-refuse", "Job/step already completing or completed")
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == 1
    assert "already completing or completed" in capsys.readouterr().err


def test_a_cancel_for_a_job_the_intake_does_not_know_is_dropped_by_the_drainer(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from relion_spot.intake.message import new_cancel

    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys)
    forged = new_cancel(row["submission_id"], "7", user="mallory")  # someone else's job
    cluster.sqs.send_message(QueueUrl=cluster.queue_url, MessageBody=forged.to_json())
    assert cluster.drainer().step() == ["cancel-ignored"]
    assert cluster.scancel_calls() == []
    assert job == "42"


def test_another_members_cancel_is_dropped(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """SQS says who sent each message; a cancel counts only from the submission's own sender
    (a role's session name may differ from one login to the next)."""
    from relion_spot.intake.message import new_cancel

    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys)
    submitter = cluster.table.get(row["submission_id"]).sender_id
    request = new_cancel(row["submission_id"], job, user="alice")  # the user field is free text

    def deliver(sender: str) -> str:
        cluster.sqs.send_message(QueueUrl=cluster.queue_url, MessageBody=request.to_json())
        (message,) = cluster.sqs.receive_message(QueueUrl=cluster.queue_url)["Messages"]
        message["Attributes"] = {"SenderId": sender}
        return cluster.drainer().handle(message)

    assert deliver("AIDAOTHERLABMEMBER") == "cancel-ignored"
    assert deliver("AROAOTHERROLE:alice") == "cancel-ignored"
    assert cluster.scancel_calls() == []
    assert cluster.table.get(row["submission_id"]).cancel_state == ""
    assert deliver(f"{submitter.split(':')[0]}:another-session") == "cancelled"
    assert cluster.scancel_calls() == [job]


def test_scancel_only_touches_the_job_carrying_the_submission(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """After a controller reset job ids start again: job 42 in Slurm may now be another
    submission's. The drainer checks the job's comment before scancel."""
    job = _accepted(cluster, monkeypatch, capsys)
    jobs = cluster.slurm.dir / "jobs"
    other = "relion-spot:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    jobs.write_text(jobs.read_text().replace(f"{job}|relion-spot:", f"{job}|{other}#"))
    monkeypatch.setattr(commands, "_sleep", lambda _s: cluster.drainer().step())
    assert main(["cancel", "--stack", STACK, job, "--poll", "0.01"]) == 1
    assert f"Slurm job {job} does not carry submission" in capsys.readouterr().err
    assert cluster.scancel_calls() == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["status", "--stack", "lab-gpu9"],
            "relion-spot status: stack 'lab-gpu9' not found in us-east-1; relion-spot cluster "
            "stacks there: lab-gpu1",
        ),
        (
            ["status", "--stack", "unrelated"],
            "relion-spot status: stack 'unrelated' is not a relion-spot cluster stack (or is not "
            "fully deployed): it has no output IntakeQueueUrl",
        ),
        (
            ["submit", "class3d", "--stack", STACK, "--K", "0"],
            "relion-spot submit: parameter K = 0 is not valid: a whole number from 1 to 50",
        ),
        (
            ["submit", "class3d", "--stack", STACK, "--iter", "many"],
            "relion-spot submit: parameter iter = 'many' is not valid: a whole number from 1 "
            "to 200",
        ),
        (
            ["submit", "class3d", "--stack", STACK, "--extra-flags", "--maxsigg 5"],
            None,
        ),
        (
            ["submit", "stage", "--stack", STACK, "--dest", "/home/lab"],
            "relion-spot submit: parameter dest = '/home/lab' is not valid: a directory under "
            "/data, e.g. /data/relion_benchmark",
        ),
        (
            ["submit", "stage", "--stack", STACK, "--source", "ftp://host/x.tar.gz"],
            "relion-spot submit: parameter source = 'ftp://host/x.tar.gz' is not valid: an "
            "http(s):// URL or s3://bucket/key (ASCII letters, digits and _ . / + @ = - in the "
            "key)",
        ),
        (
            ["cancel", "--stack", STACK, "99"],
            f"relion-spot cancel: no job 99 among the submissions of {CLUSTER} (stack {STACK})",
        ),
        (
            ["logs", "--stack", STACK, "abc"],
            "relion-spot logs: 'abc' is not a Slurm job id (digits)",
        ),
        (
            ["plot", "--stack", STACK, "99", "-o", "x.png"],
            f"relion-spot plot: no job 99 among the submissions of {CLUSTER} (stack {STACK})",
        ),
        (
            ["status", "--stack", STACK, "0b7c63c4-7f0e-4a39-8d4e-5a0d8e0c1f2a"],
            "relion-spot status: no submission 0b7c63c4-7f0e-4a39-8d4e-5a0d8e0c1f2a among the "
            f"submissions of {CLUSTER} (stack {STACK})",
        ),
        (
            ["status"],
            "relion-spot status: which cluster? give --stack <stack name> (e.g. "
            "relion-spot-gpu1) or set RELION_SPOT_STACK",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    cluster: Cluster, capsys: Any, argv: list[str], expected: str | None
) -> None:
    assert main(argv) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    if expected is not None:
        assert lines[0] == expected
    else:
        assert lines[0].startswith("relion-spot submit: parameter extra_flags:")
    assert cluster.sqs.receive_message(QueueUrl=cluster.queue_url).get("Messages") is None


def test_a_stack_from_another_version_is_refused(cluster: Cluster, capsys: Any) -> None:
    major, minor, *_ = __version__.split(".")
    outputs = {
        "ClusterName": "old",
        "Version": f"{major}.{int(minor) + 1}.0",
        "IntakeQueueUrl": cluster.queue_url,
        "IntakeTable": TABLE,
        "JobCostsTable": COSTS,
        "JobRecordsTable": "r",
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cluster.add_stack("old", outputs)
    assert main(["status", "--stack", "old"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"deployed with relion-spot {major}.{int(minor) + 1}.0, this CLI is {__version__}" in (
        line
    )


def test_credential_failures_are_one_clear_line() -> None:
    with pytest.raises(ClusterError, match="no AWS credentials found"), aws_errors("x"):
        raise NoCredentialsError()
    expired = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The security token has expired"}},
        "DescribeStacks",
    )
    refused = r"refused your credentials \(ExpiredToken\)"
    with pytest.raises(ClusterError, match=refused), aws_errors("looking up stack s"):
        raise expired


def test_the_stored_progress_redraws_the_record_and_the_log_tail_is_bounded(
    tmp_path: Path,
) -> None:
    record = _record(4)
    again = expand(compact(record, state="RUNNING", job_id="42"))
    assert [r["iteration"] for r in again["iterations"]] == [1, 2, 3, 4]
    assert again["iterations"][1]["class_distribution"] == [0.6, 0.4]
    assert again["resumed_from"] == [2]
    huge = tmp_path / "huge.out"
    huge.write_text("x" * 50_000 + "\n" + "".join(f"{'y' * 500}\n" for _ in range(60)))
    tail = log_tail(huge)
    assert len(tail.encode()) <= 8192 and tail.endswith("y" * 500)
    assert log_tail(tmp_path / "missing.out") == ""


def test_staging_is_a_job_on_the_cpu_partition(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _drain_while_waiting(cluster, monkeypatch)
    argv = ["submit", "stage", "--stack", STACK, "--source", "s3://lab-bucket/bench.tar.gz"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "42"
    script = cluster.slurm.script("42")
    assert "#SBATCH --partition=cpu" in script
    assert "--gres" not in script
    assert (
        "/opt/relion-spot/venv/bin/python -I -m relion_spot.staging fetch "
        "--dest /data/relion_benchmark "
        "--source s3://lab-bucket/bench.tar.gz" in script
    )


def test_a_submission_is_looked_up_by_its_key_and_a_job_by_the_scans_filter(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``status <submission id>`` is one GetItem (the table's key), not a read of every item;
    ``status <job id>`` filters the scan on the server and picks the newest match."""
    job = _accepted(cluster, monkeypatch, capsys)
    (item,) = cluster.dynamodb.scan(TableName=TABLE)["Items"]
    sid = item["submission_id"]["S"]
    calls: list[str] = []
    real = commands.Context.client

    def counting(self: Any, name: str) -> Any:
        client = real(self, name)
        client.meta.events.register(
            "before-call.dynamodb", lambda model, **_: calls.append(model.name)
        )
        return client

    monkeypatch.setattr(commands.Context, "client", counting)
    (row,) = _status_json(capsys, sid)
    assert row["job_id"] == job and calls[0] == "GetItem" and "Scan" not in calls
    calls.clear()
    (row,) = _status_json(capsys, job)
    assert row["submission_id"] == sid and "GetItem" not in calls and calls[0] == "Scan"
    assert main(["status", "--stack", STACK, "9999"]) == 2
    assert "no job 9999 among the submissions" in capsys.readouterr().err


def test_status_lists_submissions_not_the_permission_checks_kept_beside_them(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from relion_spot.selftest import record
    from relion_spot.selftest.permissions import CheckOutcome

    job = _accepted(cluster, monkeypatch, capsys)
    checked = [CheckOutcome("resume", "ec2:CreateFleet", "gpu", "allowed", "DryRunOperation")]
    record.store(cluster.dynamodb, TABLE, record.CONTROLLER, checked)
    assert [row["job_id"] for row in _status_json(capsys)] == [job]
    stored = record.load(cluster.dynamodb, TABLE)
    assert stored is not None and stored.outcomes == checked


def test_status_shows_why_slurm_holds_a_job(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The resume program's hold on a configuration error, as the lab sees it."""
    from relion_spot.powersave.held import note_holds
    from relion_spot.powersave.slurm import CommandResult, Slurm

    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys)
    sid = row["submission_id"]
    reason = (
        "fix the account (relion-spot doctor), then scontrol release: EC2 "
        "MaxSpotInstanceCountExceeded: Max spot instance count exceeded"
    )

    def squeue(argv: Any) -> CommandResult:
        assert list(argv) == ["squeue", "--json", f"--jobs={job}"]
        listed = {"job_id": int(job), "job_state": ["PENDING"], "comment": f"relion-spot:{sid}"}
        return CommandResult(0, json.dumps({"jobs": [listed]}))

    env = {"RELION_SPOT_INTAKE_TABLE": TABLE, "AWS_DEFAULT_REGION": REGION}
    marked = note_holds(
        env, Slurm(runner=squeue), [job], reason, dynamodb=cluster.dynamodb, clock=lambda: 1.0
    )
    assert marked == 1
    (row,) = _status_json(capsys, job)
    assert (row["state"], row["held_reason"]) == ("held", reason)
    assert main(["status", "--stack", STACK]) == 0
    table = capsys.readouterr().out
    assert "held: fix the account (relion-spot doctor)" in table


def test_plot_classes_redraws_the_slices_the_job_reported(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    """The maps stay on the cluster; the job reports each class's central slices, small, and
    ``plot --classes`` draws the class picture from them on the laptop."""
    import numpy as np

    from relion_spot.relion.progress import ClassPanels, decode_thumbnails, thumbnails

    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    out = tmp_path / "classes.png"
    argv = ["plot", "--stack", STACK, job, "--classes", "-o", str(out)]
    env = {
        "RELION_SPOT_SUBMISSION_ID": row["submission_id"],
        "RELION_SPOT_REPORT_SPOOL": str(_spool(tmp_path)),
        "SLURM_JOB_ID": job,
    }
    reporter = ProgressReporter.from_env(env, cwd=tmp_path)
    assert reporter is not None
    forwarder = _forwarder(tmp_path, job, row["submission_id"])
    assert reporter.publish(_record(3), state="RUNNING")
    forwarder.round()
    capsys.readouterr()
    assert main(argv) == 1
    assert "has reported no class slices yet" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    planes = [[rng.normal(size=(40, 40)) for _ in range(3)] for _ in range(2)]
    made = thumbnails(ClassPanels(tmp_path / "x.png", 3, [], planes))
    assert made is not None and made["views"] == ["XY", "XZ", "YZ"]
    # Each thumbnail is its slice, resampled and scaled to 0..255 over its own range.
    first = decode_thumbnails(made)[0][0].astype(float)
    expected = planes[0][0][np.ix_(*[np.linspace(0, 39, 32).round().astype(int)] * 2)]
    expected = (expected - expected.min()) / (expected.max() - expected.min()) * 255
    assert np.abs(first - expected).max() <= 0.5
    record = {**_record(3), "class_slices": made}
    record["iterations"][-1]["class_resolution_angstrom"] = [14.2, 18.0]
    assert reporter.publish(record, state="RUNNING")
    forwarder.round()
    assert main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    picture = matplotlib.image.imread(out)
    # Two classes of three views: 2.3 in a row plus the title, 6.6 in wide, at 100 dpi.
    assert picture.shape[:2] == (510, 660)
    assert picture[..., :3].std() > 0.05  # slices drawn, not a blank page
