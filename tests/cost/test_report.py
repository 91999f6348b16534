"""``relion-spot cost`` over a cost table the Lambda filled in moto."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest

from relion_spot.cost import report
from relion_spot.cost.handler import handle

from .conftest import CLUSTER, COSTS, Account, cost_item, slurm_env, write_attempt


@pytest.fixture
def priced(account: Account, reclaimed_job) -> Account:
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    t0 = reclaimed_job["attempts"][1]["END"]
    account.launch(node="gpu-3", instance_type="g5.xlarge", zone="us-east-1c")
    other = slurm_env(
        "42", nodes="gpu-3", start=int(t0) + 10, end=int(t0) + 1000, state="COMPLETED", procs=4
    )
    other["USERNAME"] = "bob"
    write_attempt(account, other)
    handle({"action": "schedule"}, account.service(), now=int(t0) + 2000)
    return account


def run(account: Account, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    report.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cost", "--cluster", CLUSTER, "--table", COSTS, *argv])
    out = io.StringIO()
    code = args.func(args, client=account.dynamodb, out=out)
    return code, out.getvalue()


def test_per_job_json_matches_the_table(priced: Account):
    code, text = run(priced, "--format", "json")
    assert code == 0
    jobs = json.loads(text)
    assert [j["job_id"] for j in jobs] == ["41", "42"]
    for job in jobs:
        item = cost_item(priced, job["job_id"])
        assert job["estimate_usd"] == item["estimate_usd"]
        assert job["reclaimed_share"] == item["reclaimed_share"]
    assert jobs[0]["attempts"] == 2 and jobs[0]["instance_types"] == "g5.xlarge g6.xlarge"


def test_per_user_csv_sums_jobs(priced: Account):
    code, text = run(priced, "--by", "user", "--format", "csv")
    assert code == 0
    users = {r["user"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(users) == {"alice", "bob"}
    assert float(users["alice"]["estimate_usd"]) == pytest.approx(
        cost_item(priced, "41")["estimate_usd"]
    )
    assert users["bob"]["reclaimed_share"] == "0.0"


def test_per_month_table_and_filters(priced: Account):
    month = cost_item(priced, "41")["month"]
    code, text = run(priced, "--by", "month", "--month", month)
    assert code == 0 and month in text and "relion-spot job cost" in text
    code, text = run(priced, "--format", "json", "--user", "bob")
    assert [j["job_id"] for j in json.loads(text)] == ["42"]
    code, text = run(priced, "--format", "json", "--month", "1999-01")
    assert json.loads(text) == []


def test_bad_input_is_one_clear_message(account: Account, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["cost", "--month", "2026-13"])
    assert exit_info.value.code == 2
    assert "month '2026-13': expected YYYY-MM" in capsys.readouterr().err
    code, _ = run(account, "--table", "no-such-table")
    assert code == 1
    assert "table 'no-such-table' not found" in capsys.readouterr().err
