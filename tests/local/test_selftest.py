"""``relion-spot selftest --stack local --gpu --interrupt``: the real CLI over the whole embedded
cloud (the demo's pieces with short settings), every verdict asserted. The interruption is the
one place the local run differs from a deployed stack's: the reconciler sends the notice an AWS
FIS experiment would (relion_spot.selftest.local). Like the demo, the command brings the engine
and images up first (scripts/setup-docker.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relion_spot.selftest.verdicts import CAPABILITIES

ITERATIONS = 8
"""Enough for the K=2 set to classify (accuracy >= 0.90), with an interruption on the way."""


@pytest.mark.docker
def test_selftest_on_the_embedded_cloud_passes_every_verdict(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "relion_spot.cli", "selftest", "--stack", "local",
            "--gpu", "--interrupt", "--iterations", str(ITERATIONS),
            "--work-dir", str(tmp_path), "--json",
        ],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    verdicts = {name: v["result"] for name, v in result["verdicts"].items()}
    assert sorted(verdicts) == sorted(CAPABILITIES)
    assert verdicts == {
        "launch": "passed",
        "bootstrap": "passed",
        "GPU": "not tested",  # no GPU on the embedded cloud
        "image": "passed",
        "RELION": "passed",
        "reclaim": "passed",
        "resume": "passed",
        "cost record": "passed",
        "scale to zero": "passed",
    }, result
    details = {name: v["detail"] for name, v in result["verdicts"].items()}
    assert details["RELION"].startswith(f"RELION 5.0.1, {ITERATIONS} iterations, accuracy")
    assert "apptainer exec" in details["image"]
    assert [c["outcome"] for c in result["checks"]] == ["allowed"] * 5
    # The GPU node's own dry runs, recorded by the node at its start (moto answers DryRun), and
    # the put of its own report item.
    assert [(c["program"], c["outcome"]) for c in result["node_checks"]] == [
        ("prolog", "allowed"), ("epilog", "allowed"), ("epilog", "allowed"), ("orphan", "allowed"),
        ("forwarder", "allowed"),
    ]  # fmt: skip
    assert [p["name"] for p in result["phases"]] == [
        "permissions", "preconditions", "data", "submit", "launch", "bootstrap",
        "first iteration", "interruption", "run", "cost record", "scale to zero",
    ]  # fmt: skip
    assert all(p["seconds"] >= 0 for p in result["phases"])
    # The data set is made on the cluster by the synthetic job, as on a deployed stack.
    data = next(p for p in result["phases"] if p["name"] == "data")
    assert "400 particles, K=2, in /data/relion-spot-selftest (CPU job " in data["note"], data
    # Each figure is rounded to 6 decimals in the JSON.
    assert sum(p["usd"] for p in result["phases"]) == pytest.approx(result["total_usd"], abs=1e-5)
    assert result["total_usd"] > 0
    assert len(result["cleanup"]) == 1 and result["cleanup"][0].startswith("interruption ")
    print(f"\nselftest: {[(p['name'], p['seconds']) for p in result['phases']]}")
