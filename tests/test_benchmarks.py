"""The benchmarks in a smoke mode: each runs end to end on a small size and prints every figure
it is read for, so none can rot between the runs that measure. Their targets are judged by the
full-size runs, not here (a 2-iteration ratio on a busy machine says nothing): exit status 0 or
1 (target met or not) is accepted, anything else — a crash, a usage error — fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import slurm_images

__all__ = ["slurm_images"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"


def run_benchmark(name: str, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return done.stdout


def test_resume_nodes_launches_every_node_cold_and_warm() -> None:
    out = run_benchmark("resume_nodes.py", "--nodes", "3")
    assert "instances launched: 3 (cold), 3 (warm)" in out
    assert re.search(r"cold run \(own boto3 client\): \d+\.\d+ s", out), out
    assert "'CreateFleet': 1" in out


def test_cost_lambda_prices_every_job_once() -> None:
    out = run_benchmark("cost_lambda.py", "--attempts", "120", "--instances", "12")
    first, again = (
        re.search(rf"^{label}: own CPU [\d.]+ s, .* jobs priced (\d+), written (\d+)", out, re.M)
        for label in ("first invocation", r"re-run, same window")
    )
    assert first and again, out
    priced = int(first.group(1))
    assert 0 < priced <= 120 and int(first.group(2)) == priced
    assert int(again.group(1)) == priced and int(again.group(2)) == 0, "the re-run wrote again"
    assert re.search(r"^targets \(.*\): (met|NOT met)$", out, re.M), out


def test_exchange_hashes_uploads_and_downloads_a_folder_byte_for_byte() -> None:
    out = run_benchmark("exchange.py", "--megabytes", "8", "--files", "4")
    for phase in ("hash", "upload", "download\\+verify"):
        assert re.search(rf"^{phase}: [\d.]+ s wall, \d+ MB/s, own CPU [\d.]+ s$", out, re.M), out
    assert "round trip byte for byte: identical" in out
    assert re.search(r"^targets \(.*\): (met|NOT met)$", out, re.M), out


def test_synth_time_times_the_cli_and_the_app() -> None:
    out = run_benchmark("synth_time.py", "--gpus", "1")
    assert re.search(r"^cdk synth, 3 stacks \(gpus=1\), CLI end to end: [\d.]+ s", out, re.M), out
    assert len(re.findall(r"^in-process synth, .*: +[\d.]+ s$", out, re.M)) == 2, out


@pytest.mark.docker
def test_class3d_overhead_runs_the_three_ways_and_reports_each(slurm_images: None) -> None:
    out = run_benchmark(
        "class3d_overhead.py", "--iterations", "2", "--kill-after", "1", "--repeats", "1",
        "--particles-per-class", "25", timeout=900,
    )  # fmt: skip
    summary = json.loads(out.strip().splitlines()[-1])
    assert len(summary["template_s"]) == len(summary["bare_s"]) == 1
    assert (
        len(summary["reclaimed_attempts_s"]) == 1 and len(summary["reclaimed_attempts_s"][0]) == 2
    )
    assert summary["orchestration_ratio"] > 0 and summary["reclaim_ratio"] > 0
    for kind in ("template", "bare", "reclaimed"):
        (accuracy,) = summary["accuracy"][kind]
        assert 0.0 <= accuracy <= 1.0
    assert "orchestration overhead A/B = " in out and "reclaim overhead C/A = " in out
    assert "(resumed from [1])" in out or "(resumed from [2])" in out, out


def test_dataset_unpack_times_a_plain_and_a_gzip_tarball() -> None:
    out = run_benchmark("dataset_unpack.py", "--megabytes", "8", "--stacks", "2")
    for suffix in (r"\.tar", r"\.tar\.gz"):
        assert re.search(rf"^{suffix}: \d+ MB archive, unpacked at \d+ MB/s: ", out, re.M), out
    assert re.search(r"^plain tar / gzip unpack rate: [\d.]+x$", out, re.M), out
    assert re.search(r"^targets \(.*\): (met|NOT met)$", out, re.M), out
