"""``relion-spot local up | down | status`` and ``--stack local``: the embedded cloud kept
running over a lab's own folder, and the lab's commands run against it on the deployed code path
(its stack's outputs from moto's CloudFormation, the intake queue, the nodes' reports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "relion_spot.cli"]


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.docker
def test_a_standing_cloud_over_a_labs_folder_runs_its_jobs_until_down(
    tmp_path: Path, slurm_images: None
) -> None:
    env = {**os.environ, "RELION_SPOT_LOCAL_WORK_DIR": str(tmp_path / "standing")}
    env.pop("RELION_SPOT_STACK", None)
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "keep.txt").write_text("the lab's own")

    assert _cli(env, "local", "status").returncode == 3
    early = _cli(env, "status", "--stack", "local")
    assert early.returncode == 1
    assert early.stderr.strip() == (
        "relion-spot status: the embedded cloud is not running: start it with relion-spot local up"
    )
    started = _cli(env, "local", "up", "--data", str(lab))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "use it with --stack local" in started.stdout
        assert _cli(env, "local", "up").stdout.startswith("already up")
        shown = _cli(env, "local", "status")
        assert shown.returncode == 0 and shown.stdout.startswith("up: "), shown.stdout

        submitted = _cli(
            env, "submit", "synthetic", "--stack", "local", "--project-dir", "/data/try",
            "--particles-per-class", "20",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        deadline = time.monotonic() + 600
        while True:
            (row,) = json.loads(_cli(env, "status", "--stack", "local", job, "--json").stdout)
            if row["state"] in ("finished", "failed") or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert row["state"] == "finished", row
        # The set is in the lab's own folder, where the lab's tools open it.
        assert (lab / "try" / "particles.star").is_file()
        assert (lab / "try" / "synthetic.json").is_file()
        logs = _cli(env, "logs", "--stack", "local", job)
        assert logs.returncode == 0 and "synthetic: attempt 0 of job" in logs.stdout, logs
        # A folder of the lab's staged through the standing cloud's exchange, as on AWS.
        mine = tmp_path / "mine"
        (mine / "Particles").mkdir(parents=True)
        (mine / "Particles" / "stack@1.mrcs").write_bytes(bytes(range(256)) * 100)
        (mine / "reference.mrc").write_bytes(b"map")
        staged = _cli(env, "stage", str(mine), "--stack", "local", "--project-dir", "/data/mine")
        assert staged.returncode == 0, staged.stderr
        for name in ("Particles/stack@1.mrcs", "reference.mrc"):
            assert (lab / "mine" / name).read_bytes() == (mine / name).read_bytes()
    finally:
        stopped = _cli(env, "local", "down", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert _cli(env, "local", "status").returncode == 3
    left = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=relion-spot-local", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert left.stdout.strip() == ""
    assert (lab / "keep.txt").read_text() == "the lab's own"
    # A state file left by a process that died, naming a pid now someone else's: not running.
    state = tmp_path / "standing" / "standing.json"
    state.write_text(json.dumps({
        "endpoint": "http://127.0.0.1:1", "region": "us-east-1", "pid": os.getpid(),
        "data_dir": str(lab), "cluster": "x", "started_at": 0.0,
    }))  # fmt: skip
    assert _cli(env, "local", "status").returncode == 3
    assert _cli(env, "status", "--stack", "local").returncode == 1
