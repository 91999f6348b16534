"""Slurm's job list read from ``squeue --json`` (Slurm 24.11's shape: ``job_state`` the base
state first, then flags; numbers bare or as set/infinite/number objects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relion_spot.slurm.squeue import SqueueError, command, number, parse


def answer(*jobs: dict[str, Any]) -> str:
    return json.dumps({"jobs": list(jobs), "meta": {}, "errors": [], "warnings": []})


def test_every_field_is_read_apart_whatever_the_owner_writes_in_the_comment() -> None:
    """A comment is the job owner's to change; with squeue's text format one holding ``|``
    shifted the state, reason and dependency fields after it."""
    comment = "relion-spot:s|CANCELLED|DependencyNeverSatisfied|afterok:1(failed)"
    (job,) = parse(
        answer(
            {
                "job_id": 12, "user_id": 1000, "job_state": ["RUNNING"], "comment": comment,
                "state_reason": "None", "dependency": "", "partition": "gpu-1",
                "nodes": "gpu-[1-2]", "node_count": {"set": True, "infinite": False, "number": 2},
                "start_time": {"set": True, "infinite": False, "number": 1700000000},
                "admin_comment": "", "hold": False,
            }
        )
    )  # fmt: skip
    assert (job.job_id, job.state, job.reason, job.dependency) == ("12", "RUNNING", "None", "")
    assert job.comment == comment
    assert (job.nodes, job.node_count, job.start_time, job.user_id) == (
        ("gpu-1", "gpu-2"), 2, 1700000000, 1000,
    )  # fmt: skip
    assert job.active and not job.ended and not job.pending


@pytest.mark.parametrize(
    ("job_state", "ended", "active"),
    [
        (["PENDING"], False, False),
        (["PENDING", "REQUEUED"], False, False),  # requeued: runs again
        (["PENDING", "COMPLETING"], False, True),  # requeued while its epilog runs
        (["RUNNING"], False, True),
        (["RUNNING", "CONFIGURING"], False, True),  # its nodes are booting
        (["COMPLETED"], True, False),
        (["COMPLETED", "COMPLETING"], True, True),  # %T said COMPLETING
        (["FAILED", "COMPLETING"], True, True),
        (["CANCELLED"], True, False),
        (["NODE_FAIL"], True, False),
        (["TIMEOUT"], True, False),
    ],
)
def test_the_base_state_decides_whether_a_job_has_ended(
    job_state: list[str], ended: bool, active: bool
) -> None:
    (job,) = parse(answer({"job_id": 3, "job_state": job_state}))
    assert (job.state, job.ended, job.active) == (job_state[0], ended, active)
    assert job.states == frozenset(job_state)


def test_jobs_come_oldest_first_and_a_bare_state_is_read() -> None:
    jobs = parse(
        answer({"job_id": 10, "job_state": "PENDING"}, {"job_id": 9, "job_state": ["RUNNING"]})
    )
    assert [(j.job_id, j.state) for j in jobs] == [("9", "RUNNING"), ("10", "PENDING")]
    assert jobs[1].node_count == 1 and jobs[1].nodes == () and jobs[1].user_id == -1


def test_numbers_bare_or_as_slurms_objects() -> None:
    assert number(5) == 5
    assert number({"set": True, "infinite": False, "number": 7}) == 7
    assert number({"set": False, "infinite": False, "number": 7}) == 0
    assert number(True) == 0 and number("7") == 0 and number(None) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slurm_load_jobs error: Unable to contact slurm controller", "answered no JSON"),
        ('{"errors": []}', "without a 'jobs' list"),
        ('[{"job_id": 1}]', "without a 'jobs' list"),
        ('{"jobs": [{"comment": "relion-spot:s"}]}', "a job without an id"),
        ('{"jobs": [{"job_id": 4}]}', "job 4 without a state"),
        ('{"jobs": [{"job_id": 4, "job_state": [1]}]}', "job 4 without a state"),
        ('{"jobs": [{"job_id": 4, "job_state": ["RUNNING"], "nodes": "gpu-[2-"}]}', "job 4: nodes"),
    ],
)
def test_an_answer_that_is_not_the_job_list_says_what_was_wrong(text: str, message: str) -> None:
    with pytest.raises(SqueueError, match=message):
        parse(text)


def test_the_call_lists_every_job_in_any_state_or_a_selection() -> None:
    assert command() == ["squeue", "--json", "--all", "--states=all"]
    assert command("--nodelist=gpu-1") == ["squeue", "--json", "--nodelist=gpu-1"]


@pytest.mark.parametrize(
    ("job_state", "shown"),
    [
        (["RUNNING"], "RUNNING"),
        (["RUNNING", "CONFIGURING"], "CONFIGURING"),  # allocated, its node still boots
        (["PENDING", "REQUEUED"], "PENDING"),
        (["PENDING", "COMPLETING"], "COMPLETING"),  # requeued, the last attempt's epilog runs
        (["COMPLETED", "COMPLETING"], "COMPLETING"),
        (["COMPLETED"], "COMPLETED"),
    ],
)
def test_the_shown_state_is_what_scontrol_show_job_names(job_state: list[str], shown: str) -> None:
    (job,) = parse(answer({"job_id": 3, "job_state": job_state}))
    assert job.shown_state == shown


def test_a_requeued_jobs_restarts_and_node_list_are_read() -> None:
    (job,) = parse(
        answer({"job_id": 3, "job_state": ["RUNNING"], "restart_cnt": 2, "nodes": "gpu-[1-2]"})
    )
    assert (job.restarts, job.node_list, job.nodes) == (2, "gpu-[1-2]", ("gpu-1", "gpu-2"))


def test_bytes_a_job_wrote_that_are_not_utf8_are_read_not_a_crash(tmp_path: Path) -> None:
    """Slurm's JSON passes a comment's bytes through as they are, and a job's owner may write
    any (``scontrol update comment=``): the intake and the controller's programs read on."""
    from relion_spot.intake.slurm import SlurmJobs
    from relion_spot.powersave.slurm import run_command

    squeue = tmp_path / "squeue"
    listed = (
        b'{"jobs": [{"job_id": 5, "job_state": ["RUNNING"], "comment": "relion-spot:s"},'
        b' {"job_id": 6, "job_state": ["PENDING"], "comment": "relion-spot:\xff"}]}'
    )
    squeue.write_bytes(b"#!/bin/sh\ncat <<'EOF'\n" + listed + b"\nEOF\n")
    squeue.chmod(0o755)
    assert SlurmJobs(squeue=(str(squeue),)).submitted() == {"s": "5", "\ufffd": "6"}
    assert [job.job_id for job in parse(run_command([str(squeue)]).stdout)] == ["5", "6"]
