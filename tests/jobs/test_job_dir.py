"""Job directories across clusters that share /data: each job gets its own RELION-numbered
directory, a requeued attempt finds it again, and nothing uses a directory another job claimed."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from relion_spot.jobs import job_dir
from relion_spot.jobs.job_dir import CLAIM_FILE, JobDirError, Owner, claim, find, read_claim

SUBMISSION_A = "0b7a4c1e-2f4d-4a7e-9a51-6c0de1f2a3b4"
SUBMISSION_B = "5f0e9d8c-7b6a-4c3d-8e2f-1a0b9c8d7e6f"


def slurm_env(cluster: str, job_id: str, restarts: int = 0, submission: str = "") -> dict:
    env = {"SLURM_CLUSTER_NAME": cluster, "SLURM_JOB_ID": job_id}
    if restarts:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    if submission:
        env["RELION_SPOT_SUBMISSION_ID"] = submission
    return env


def test_job_5_of_two_clusters_gets_two_directories_and_each_requeue_finds_its_own(
    tmp_path: Path,
) -> None:
    one_gpu = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "5"))
    four_gpu = claim(tmp_path, "Class3D", slurm_env("lab-gpu4", "5"))
    assert (one_gpu.directory.name, four_gpu.directory.name) == ("job001", "job002")

    assert claim(tmp_path, "Class3D", slurm_env("lab-gpu4", "5", 1)).directory == four_gpu.directory
    assert claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "5", 2)).directory == one_gpu.directory


def test_a_controller_reset_never_resumes_the_old_job_with_the_same_id(tmp_path: Path) -> None:
    before_reset = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "1"))
    (before_reset.directory / "run_it025_model.star").write_text("finished run\n")

    after_reset = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "1"))
    assert after_reset.directory != before_reset.directory
    assert list(after_reset.directory.glob("run_*")) == []
    requeued = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "1", 1))
    assert requeued.directory == after_reset.directory


def test_a_submission_is_found_by_its_id_whatever_cluster_or_job_id(tmp_path: Path) -> None:
    first = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "3", submission=SUBMISSION_A))
    other = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "3", submission=SUBMISSION_B))
    assert first.directory != other.directory
    again = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "3", 1, submission=SUBMISSION_A))
    assert again.directory == first.directory
    claimed = json.loads((first.directory / CLAIM_FILE).read_text())
    assert claimed["submission_id"] == SUBMISSION_A
    assert claimed["cluster"] == "lab-gpu1"


def test_numbers_follow_relion_across_job_types_and_leave_unclaimed_directories_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "Import" / "job001").mkdir(parents=True)
    (tmp_path / "Class3D" / "job007").mkdir(parents=True)
    (tmp_path / "Class3D" / "job007" / "run_it001_model.star").write_text("GUI job\n")
    made = claim(tmp_path, "Class3D", slurm_env("lab-gpu1", "7", 3))
    assert made.directory.name == "job008", "a requeue with no claim of its own starts anew"
    assert (tmp_path / "Class3D" / "job007" / "run_it001_model.star").read_text() == "GUI job\n"

    (tmp_path / "default_pipeline.star").write_text(
        "data_pipeline_general\n\n_rlnPipeLineJobCounter                      12\n"
    )
    assert claim(tmp_path, "Refine3D", slurm_env("c", "9")).directory.name == "job012"


def _claim_in_process(args: tuple[str, str]) -> str:
    project, job_id = args
    env = slurm_env(f"cluster-{job_id}", job_id)
    return str(claim(Path(project), "Class3D", env).directory)


def test_simultaneous_first_attempts_never_share_a_directory(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        made = pool.map(_claim_in_process, [(str(tmp_path), str(n)) for n in range(24)])
    assert len(set(made)) == 24
    for directory in made:
        owner = job_dir.read_claim(Path(directory))
        assert owner is not None


def test_a_run_claimed_by_another_job_is_refused(tmp_path: Path) -> None:
    theirs = claim(tmp_path, "Class3D", slurm_env("lab-gpu4", "5"))
    with pytest.raises(JobDirError, match="belongs to job 5 of cluster lab-gpu4, not to job 5 "):
        job_dir.check_owner(theirs.directory, slurm_env("lab-gpu1", "5"))
    job_dir.check_owner(theirs.directory, slurm_env("lab-gpu4", "5", 1))


def test_the_checkpoint_runner_refuses_to_continue_another_jobs_run(tmp_path: Path) -> None:
    theirs = claim(tmp_path, "Class3D", slurm_env("lab-gpu4", "5"))
    done = subprocess.run(
        [sys.executable, "-m", "relion_spot.relion.checkpoint", "run", "--",
         "relion_refine", "--o", f"{theirs.directory.relative_to(tmp_path)}/run",
         "--K", "2", "--iter", "3", "--i", "p.star", "--ref", "r.mrc"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **slurm_env("lab-gpu1", "5")},
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "belongs to job 5 of cluster lab-gpu4" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(theirs.directory.iterdir()) == [theirs.directory / CLAIM_FILE]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--type", "Class3D"], {}, "claim: SLURM_JOB_ID = '': not running under Slurm"),
        (["--type", "../x"], {"SLURM_JOB_ID": "1"}, "claim: job type '../x' is not valid"),
    ],
)
def test_the_command_prints_the_directory_or_one_line(
    tmp_path: Path, args: list[str], env: dict, message: str
) -> None:
    def run(extra: dict) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relion_spot.jobs.claim", *args],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", **extra},
            capture_output=True,
            text=True,
            check=False,
        )

    bad = run(env)
    assert bad.returncode == 2
    assert bad.stderr.startswith(message), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    good = subprocess.run(
        [sys.executable, "-m", "relion_spot.jobs.claim", "--type", "Class3D"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **slurm_env("c", "4")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (good.returncode, good.stdout) == (0, "Class3D/job001\n"), good.stderr


def test_owner_needs_a_slurm_job() -> None:
    with pytest.raises(JobDirError):
        Owner.from_env({"SLURM_JOB_ID": "abc"})


@pytest.mark.parametrize(
    "plant",
    [
        lambda claim: os.mkfifo(claim),
        lambda claim: claim.symlink_to("/dev/zero"),
        lambda claim: claim.write_text("[" * 100_000),
        lambda claim: claim.write_text(" " * 5000 + "{}"),
    ],
    ids=["fifo", "link-to-dev-zero", "deep-json", "oversized"],
)
def test_a_planted_claim_is_no_claim_and_never_blocks_or_floods_a_root_reader(
    tmp_path: Path, plant: Any
) -> None:
    """The drainer (root on the controller) reads claims in a project jobs write."""
    directory = tmp_path / "Class3D" / "job001"
    directory.mkdir(parents=True)
    plant(directory / CLAIM_FILE)
    started = time.monotonic()
    assert read_claim(directory) is None
    assert find(tmp_path, Owner("", "", "x")) is None
    assert time.monotonic() - started < 5


def test_a_linked_job_directory_is_not_one_of_the_projects(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "job001"
    elsewhere.mkdir(parents=True)
    (elsewhere / CLAIM_FILE).write_text(
        json.dumps({"cluster": "c", "slurm_job_id": "1", "submission_id": "x", "created": 1.0})
    )
    project = tmp_path / "p"
    (project / "Class3D").mkdir(parents=True)
    (project / "Class3D" / "job001").symlink_to(elsewhere)
    (project / "Refine3D").symlink_to(elsewhere.parent)
    assert find(project, Owner("", "", "x")) is None
