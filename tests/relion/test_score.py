"""Scoring: label-swap invariance, the exact assignment, and clear refusals of bad input."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from relion_spot.relion.score import (
    ScoreError,
    max_weight_assignment,
    read_truth,
    score_data_star,
    score_run,
)


def _write_classes(path: Path, names: list[str], classes: list[int]) -> Path:
    table = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": classes})
    starfile.write({"particles": table}, path, overwrite=True)
    return path


def _names(n: int, stack: str = "particles.mrcs") -> list[str]:
    return [f"{i + 1:06d}@{stack}" for i in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_assignment_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = (int(x) for x in rng.integers(1, 6, 2))
    weights = rng.integers(0, 50, (rows, cols))
    pairs = max_weight_assignment(weights)
    assert len(pairs) == min(rows, cols)
    assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
    best = max(
        sum(weights[r, c] for r, c in zip(perm, range(cols), strict=True) if r is not None)
        for perm in itertools.permutations([*range(rows), *[None] * cols], cols)
    )
    assert sum(weights[r, c] for r, c in pairs) == best


def test_swapped_labels_score_perfectly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    truth_classes = rng.integers(1, 4, 90).tolist()
    relabel = {1: 3, 2: 1, 3: 2}
    truth = read_truth(_write_classes(tmp_path / "truth.star", _names(90), truth_classes))
    run = _write_classes(
        tmp_path / "run_it004_data.star", _names(90), [relabel[c] for c in truth_classes]
    )
    score = score_data_star(run, truth)
    assert score.accuracy == 1.0
    assert score.iteration == 4
    assert score.mapping == {3: 1, 1: 2, 2: 3}


def test_partial_agreement_counts_best_matching_only(tmp_path: Path) -> None:
    truth = read_truth(_write_classes(tmp_path / "truth.star", _names(10), [1] * 5 + [2] * 5))
    # Run class 2 holds 4 of true class 1 and 1 of true class 2; run class 1 the rest.
    run_classes = [2, 2, 2, 2, 1, 1, 1, 1, 1, 2]
    run = _write_classes(tmp_path / "run_it001_data.star", _names(10), run_classes)
    assert score_data_star(run, truth).accuracy == pytest.approx(0.8)


def test_images_named_from_another_folder_still_match(tmp_path: Path) -> None:
    truth = read_truth(_write_classes(tmp_path / "truth.star", _names(6), [1, 1, 1, 2, 2, 2]))
    run = _write_classes(
        tmp_path / "run_it002_data.star", _names(6, "../data/particles.mrcs"), [2, 2, 2, 1, 1, 1]
    )
    assert score_data_star(run, truth).accuracy == 1.0


def test_score_run_reads_every_iteration(tmp_path: Path) -> None:
    _write_classes(tmp_path / "truth.star", _names(4), [1, 1, 2, 2])
    _write_classes(tmp_path / "run_it001_data.star", _names(4), [1, 1, 1, 1])
    _write_classes(tmp_path / "run_it002_data.star", _names(4), [1, 2, 2, 2])
    _write_classes(tmp_path / "run_it003_data.star", _names(4), [2, 2, 1, 1])
    _write_classes(tmp_path / "other_it009_data.star", _names(4), [2, 2, 1, 1])
    scores = score_run(tmp_path / "run", tmp_path / "truth.star")
    assert [(s.iteration, s.accuracy) for s in scores] == [(1, 0.5), (2, 0.75), (3, 1.0)]


def test_particles_missing_from_truth_are_refused(tmp_path: Path) -> None:
    truth = read_truth(_write_classes(tmp_path / "truth.star", _names(3), [1, 2, 1]))
    run = _write_classes(tmp_path / "run_it001_data.star", _names(4), [1, 2, 1, 2])
    with pytest.raises(ScoreError, match="not in the truth"):
        score_data_star(run, truth)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relion_spot.relion.score", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_cli_missing_truth_is_one_clear_line(tmp_path: Path) -> None:
    _write_classes(tmp_path / "run_it001_data.star", _names(2), [1, 2])
    done = _cli("--run-root", str(tmp_path / "run"), "--truth", str(tmp_path / "nope.star"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"truth file {tmp_path / 'nope.star'} does not exist" in done.stderr


def test_cli_truth_without_classes_is_refused(tmp_path: Path) -> None:
    starfile.write({"particles": pd.DataFrame({"rlnImageName": _names(2)})}, tmp_path / "t.star")
    _write_classes(tmp_path / "run_it001_data.star", _names(2), [1, 2])
    done = _cli("--run-root", str(tmp_path / "run"), "--truth", str(tmp_path / "t.star"))
    assert done.returncode == 2
    assert "rlnClassNumber" in done.stderr and "Traceback" not in done.stderr


def test_cli_run_without_iterations_is_refused(tmp_path: Path) -> None:
    _write_classes(tmp_path / "truth.star", _names(2), [1, 2])
    done = _cli("--run-root", str(tmp_path / "run"), "--truth", str(tmp_path / "truth.star"))
    assert done.returncode == 2
    assert "no run_itNNN_data.star files" in done.stderr
