"""``relion-spot demo`` as a newcomer runs it: the real CLI, the whole embedded cloud, real RELION
in the node containers, a spot reclaim and the resume. The demo's own JSON line is the verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relion_spot.demo import DemoSettings


def _demo(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relion_spot.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.docker
def test_the_demo_classifies_survives_a_reclaim_and_prices_it(
    slurm_images: None, tmp_path: Path
) -> None:
    done = _demo("--json", "--work-dir", str(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    defaults = DemoSettings()
    assert result["state"] == "COMPLETED"
    assert result["iterations"] == defaults.iterations
    assert len(result["resolution_per_iteration"]) == defaults.iterations
    assert result["accuracy"] >= 0.90, result
    assert result["failures"] == [], result
    assert result["relion_version"].startswith("5.0.1"), result
    assert result["launcher"].startswith("apptainer exec --bind /data,/scratch /containers/"), (
        result
    )
    assert result["reclaims"] == 1
    assert result["reclaimed_at_iteration"] >= defaults.reclaim_after, result
    assert result["resumed_from"] == [result["reclaimed_at_iteration"]], result
    assert result["nodes_launched"] == 2
    assert result["cpu_nodes_launched"] in (0, 1), "one image check at most, none once checked"
    assert result["cost_usd"] > 0
    assert 0 < result["reclaimed_share"] < 1, result
    assert Path(result["plot"]).is_file()
    assert result["plot"].endswith(".png")
    assert Path(result["classes_plot"]).is_file(), "the classes' central slices, drawn in the job"
    print(f"\ndemo: {result['wall_seconds']:.0f} s, phases {result['phases']}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iterations", "0"], "--iterations 0: give 1 to 50"),
        (["--reclaim-after", "12", "--iterations", "12"], "--reclaim-after 12: give 0"),
        (["--particles-per-class", "5"], "--particles-per-class 5: give 20 to 2000"),
    ],
)
def test_bad_settings_are_one_line_and_launch_nothing(args: list[str], message: str) -> None:
    done = _demo(*args, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"relion-spot demo: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def _kept_promises() -> dict:
    return {
        "state": "COMPLETED",
        "iterations": DemoSettings().iterations,
        "reclaims": 1,
        "reclaimed_at_iteration": 5,
        "resumed_from": [5],
        "accuracy": 0.93,
        "cost_usd": 0.04,
        "relion_version": "5.0.1",
        "launcher": "apptainer exec --bind /data,/scratch /containers/r.sif",
    }


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({}, None),
        ({"state": "FAILED"}, "the job ended FAILED"),
        ({"iterations": 7}, "7 of 8 iterations written"),
        ({"reclaims": 0}, "0 spot reclaims happened"),
        ({"resumed_from": []}, "resumed after iterations none, expected [5]"),
        ({"resumed_from": [4]}, "resumed after iterations [4], expected [5]"),
        ({"reclaimed_at_iteration": 3, "resumed_from": [3]}, "the reclaim came after iteration 3"),
        ({"reclaimed_at_iteration": None}, "no complete iteration was on disk"),
        ({"accuracy": 0.6}, "accuracy 0.6 against the truth is below 0.9"),
        ({"accuracy": None}, "accuracy None"),
        ({"cost_usd": None}, "the job was not priced"),
        ({"relion_version": "3.1.3"}, "the job ran RELION 3.1.3, not RELION 5"),
        ({"launcher": "env LD_PRELOAD=x"}, "the job ran RELION through 'env LD_PRELOAD=x'"),
    ],
)
def test_the_demo_fails_when_its_own_outcomes_do_not_hold(
    broken: dict, message: str | None
) -> None:
    from relion_spot.demo.runner import DemoResult, outcome_failures

    result = DemoResult(**{**_kept_promises(), **broken})
    failures = outcome_failures(DemoSettings(), result)
    if message is None:
        assert failures == []
    else:
        assert len(failures) == 1 and failures[0].startswith(message), failures
