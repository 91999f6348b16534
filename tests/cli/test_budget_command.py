"""``relion-spot budget`` against a cluster stack in moto: the month's priced jobs, the cap the
stack was deployed with, what is left; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest

from relion_spot import __version__
from relion_spot.cli import main
from relion_spot.cost.pricing import AttemptCost, JobCost
from relion_spot.cost.store import CostStore

from .conftest import CLUSTER, COSTS, RECORDS, STACK, Cluster

CAPPED = "lab-capped"


def _job(job_id: str, start: int, usd: float) -> JobCost:
    attempt = AttemptCost(
        f"{start:012d}", "COMPLETED", start, start + 3600, False, usd, 0.0, (), ()
    )
    return JobCost(CLUSTER, job_id, "alice", "class3d", "gpu", start, start + 3600, (attempt,))


@pytest.fixture
def priced(cluster: Cluster) -> Cluster:
    now = int(time.time())
    this_month = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0)
    start = int(this_month.timestamp())
    CostStore(cluster.dynamodb, COSTS).write_estimates(
        [_job("1", start, 1.25), _job("2", start + 60, 0.5), _job("3", start - 86400, 40.0)],
        priced_at=now,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cluster.add_stack(
            CAPPED,
            {
                "ClusterName": CLUSTER,
                "Version": __version__,
                "IntakeQueueUrl": cluster.queue_url,
                "IntakeTable": "unused",
                "JobCostsTable": COSTS,
                "JobRecordsTable": RECORDS,
                "MonthlyBudgetUsd": "2.00",
            },
        )
    return cluster


def test_spent_and_left_this_month(priced: Cluster, capsys: Any) -> None:
    assert main(["budget", "--stack", CAPPED, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cap_usd"] == 2.0
    assert report["spent_usd"] == 1.75  # last month's $40 job is not this month's
    assert report["left_usd"] == 0.25
    assert main(["budget", "--stack", CAPPED]) == 0
    text = capsys.readouterr().out
    assert "$2.00" in text and "spent  $1.75" in text and "left   $0.25" in text


def test_a_stack_without_a_cap_shows_the_spend(priced: Cluster, capsys: Any) -> None:
    assert main(["budget", "--stack", STACK, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["cap_usd"], report["spent_usd"], report["left_usd"]) == (None, 1.75, None)


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (["--stack", CAPPED, "--month", "2026-13"], "--month '2026-13' is not a month", 2),
        (["--stack", "nope"], "stack 'nope' not found", 1),
        ([], "which cluster? give --stack", 1),
    ],
)
def test_bad_input_is_one_line(
    priced: Cluster, capsys: Any, args: list[str], message: str, status: int
) -> None:
    assert main(["budget", *args]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("relion-spot budget: ") and message in line
