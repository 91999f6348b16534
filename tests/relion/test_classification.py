"""Real RELION classification of the ground-truthed set: accuracy, reclaims, resume points."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import mrcfile
import pytest

from relion_spot.intake.report import compact
from relion_spot.relion.checkpoint import (
    check_iteration,
    find_resume_point,
    history_path,
    iteration_files,
    snapshot_dir,
)
from relion_spot.relion.progress import (
    classes_path,
    collect,
    decode_thumbnails,
    plot_classes,
    plot_path,
    progress_path,
    update,
)
from relion_spot.relion.score import score_run
from relion_spot.relion.synthetic import SyntheticResult

from .conftest import (
    FIRST_KILL_AFTER,
    ITERATIONS,
    SECOND_KILL_AFTER,
    SPEC,
    RunRecord,
    run_to_end,
    truncate,
)

pytestmark = pytest.mark.relion


def _final_accuracy(record: RunRecord, dataset: SyntheticResult) -> float:
    scores = score_run(record.root, dataset.truth)
    assert scores[-1].iteration == ITERATIONS
    return scores[-1].accuracy


def test_uninterrupted_run_classifies(uninterrupted: RunRecord, dataset: SyntheticResult) -> None:
    accuracy = _final_accuracy(uninterrupted, dataset)
    print(f"\nuninterrupted: {uninterrupted.wall_seconds:.0f} s wall, accuracy {accuracy:.3f}")
    assert accuracy >= 0.90


def test_killed_run_resumes_after_its_last_complete_iteration(resumed: RunRecord) -> None:
    first, second, third = resumed.logs
    first_kill, second_kill = resumed.kills
    assert first_kill >= FIRST_KILL_AFTER and second_kill >= SECOND_KILL_AFTER
    assert "no complete iteration: starting fresh" in first
    assert f"continuing after iteration {first_kill} of {ITERATIONS}" in second
    assert f"--continue {resumed.relative_root}_it{first_kill:03d}_optimiser.star" in second
    # The second kill left its newest iteration with a map cut short: the job goes back one.
    damaged = f"run_it{second_kill:03d}_class002.mrc"
    assert f"iteration {second_kill} is incomplete: {damaged} is" in third
    assert f"continuing after iteration {second_kill - 1} of {ITERATIONS}" in third
    history = json.loads(history_path(resumed.root).read_text())
    assert history["resumes"] == 2
    assert history["resumed_from"] == [first_kill, second_kill - 1]
    assert [s["action"] for s in history["starts"]] == ["fresh", "continue", "continue"]


def test_resumed_run_has_every_iteration_complete(resumed: RunRecord) -> None:
    for iteration in range(1, ITERATIONS + 1):
        check_iteration(resumed.root, iteration, SPEC.classes)
    point = find_resume_point(resumed.root, SPEC.classes, ITERATIONS)
    assert (point.action, point.iteration) == ("finished", ITERATIONS)


def test_resumed_run_matches_uninterrupted_accuracy(
    resumed: RunRecord, uninterrupted: RunRecord, dataset: SyntheticResult
) -> None:
    resumed_accuracy = _final_accuracy(resumed, dataset)
    uninterrupted_accuracy = _final_accuracy(uninterrupted, dataset)
    print(
        f"\nresumed twice: {resumed.wall_seconds:.0f} s wall, accuracy {resumed_accuracy:.3f}"
        f" (uninterrupted {uninterrupted_accuracy:.3f})"
    )
    assert abs(resumed_accuracy - uninterrupted_accuracy) <= 0.05


def test_finished_run_exits_at_once_without_recomputing(
    uninterrupted: RunRecord, dataset: SyntheticResult, tmp_path: Path
) -> None:
    """A requeue of a job whose run already finished (e.g. reclaimed between RELION's last
    write and the job's exit): the template finds its directory and exits 0 at once."""
    before = {p.name: p.stat().st_mtime_ns for p in uninterrupted.root.parent.iterdir()}
    started = time.monotonic()
    output = run_to_end(dataset.out, uninterrupted.job, 1, tmp_path / "requeued.log")
    assert f"finished: iteration {ITERATIONS} of {ITERATIONS} is complete" in output
    assert f"in /data/{dataset.out.name}/{uninterrupted.root.parent.relative_to(dataset.out)}" in (
        output
    )
    assert time.monotonic() - started < 60
    after = {p.name: p.stat().st_mtime_ns for p in uninterrupted.root.parent.iterdir()}
    relion_files = {n for n in before if "_it0" in n}
    assert {n: after[n] for n in relion_files} == {n: before[n] for n in relion_files}
    assert not any(n.startswith("run_it0") for n in set(after) - set(before))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate-map", "{newest}_class001.mrc is 154214 bytes, its header says 257024"),
        ("cut-map-header", "{newest}_class001.mrc is not a readable MRC map"),
        ("missing-map", "{newest}_class001.mrc is missing"),
        ("truncate-data", "{newest}_data.star"),
        ("missing-sampling", "{newest}_sampling.star is missing"),
        ("cut-model-at-line", "{newest}_model.star lacks the model_"),
        ("cut-data-at-line", "{newest}_model.star, which counts 200"),
        ("text-in-a-figure", "{newest}: a figure does not read (ValueError"),
    ],
)
def test_incomplete_newest_iteration_falls_back_to_previous(
    uninterrupted: RunRecord, copy_run: Callable[[RunRecord], Path], damage: str, reason: str
) -> None:
    root = copy_run(uninterrupted)
    files = iteration_files(root, ITERATIONS, SPEC.classes)
    if damage == "truncate-map":
        truncate(files["class001"], keep=0.6)
    elif damage == "cut-map-header":
        truncate(files["class001"], keep=0.001)
    elif damage == "missing-map":
        files["class001"].unlink()
    elif damage == "truncate-data":
        truncate(files["data"], keep=0.5)
    elif damage == "missing-sampling":
        files["sampling"].unlink()
    elif damage == "cut-model-at-line":  # stopped at a line boundary: parses, blocks missing
        lines = files["model"].read_text().splitlines(keepends=True)
        files["model"].write_text("".join(lines[: len(lines) // 3]))
    elif damage == "text-in-a-figure":  # a hand-edited or foreign file: never a crash
        text = files["optimiser"].read_text()
        files["optimiser"].write_text(
            re.sub(r"(_rlnCurrentIteration\s+)\S+", r"\1abc", text, count=1)
        )
    else:  # stopped at a line boundary inside the particle table: parses, rows missing
        lines = files["data"].read_text().splitlines(keepends=True)
        files["data"].write_text("".join(lines[: len(lines) - SPEC.particles // 5]))
    point = find_resume_point(root, SPEC.classes, ITERATIONS)
    assert (point.action, point.iteration) == ("continue", ITERATIONS - 1)
    assert reason.format(newest=f"run_it{ITERATIONS:03d}") in point.passed_over[ITERATIONS]


def test_pictures_wait_between_iterations_but_never_at_the_end(
    uninterrupted: RunRecord, copy_run: Callable[[RunRecord], Path]
) -> None:
    """The watcher redraws the pictures at most every PICTURES_EVERY_SECONDS while the run goes
    (pictures=False between): the record is written each time, the PNGs only when due or final."""
    root = copy_run(uninterrupted)
    for picture in (plot_path(root), classes_path(root)):
        picture.unlink(missing_ok=True)
    record = update(root, pictures=False)
    assert progress_path(root).is_file() and record["current_iteration"] == ITERATIONS
    assert not plot_path(root).exists() and not classes_path(root).exists()
    final = update(root, pictures=False, final=True)
    assert plot_path(root).is_file() and classes_path(root).is_file()
    # What the job reports of its picture: each class's three slices, small, as drawn.
    sliced = final["class_slices"]
    assert (sliced["iteration"], sliced["views"]) == (ITERATIONS, ["XY", "XZ", "YZ"])
    planes = decode_thumbnails(sliced)
    assert len(planes) == SPEC.classes and all(len(row) == 3 for row in planes)
    assert all(plane.shape == (32, 32) and plane.std() > 10 for row in planes for plane in row)
    assert json.loads(progress_path(root).read_text())["class_slices"] == sliced


def test_iteration_numbers_are_read_from_the_files(
    uninterrupted: RunRecord, copy_run: Callable[[RunRecord], Path]
) -> None:
    root = copy_run(uninterrupted)
    files = iteration_files(root, ITERATIONS, SPEC.classes)
    stale = iteration_files(root, ITERATIONS - 1, SPEC.classes)["optimiser"]
    files["optimiser"].write_bytes(stale.read_bytes())
    point = find_resume_point(root, SPEC.classes, ITERATIONS)
    assert point.iteration == ITERATIONS - 1
    assert f"says iteration {ITERATIONS - 1}" in point.passed_over[ITERATIONS]


def test_checkpoint_rewritten_during_a_reclaim_is_restored_from_its_snapshot(
    resumed: RunRecord, copy_run: Callable[[RunRecord], Path]
) -> None:
    # The last resume continued from the iteration before the damaged one and snapshotted it
    # first. Pretend the node was reclaimed while RELION was rewriting it (before the next
    # iteration existed).
    root = copy_run(resumed)
    checkpoint = resumed.kills[1] - 1
    assert (snapshot_dir(root) / "ITERATION").read_text().strip() == str(checkpoint)
    for later in range(checkpoint + 1, ITERATIONS + 1):
        for path in iteration_files(root, later, SPEC.classes).values():
            path.unlink()
    damaged = iteration_files(root, checkpoint, SPEC.classes)
    truncate(damaged["data"], keep=0.3)
    damaged["class001"].unlink()

    point = find_resume_point(root, SPEC.classes, ITERATIONS)
    assert (point.action, point.iteration, point.restored_from_snapshot) == (
        "continue", checkpoint, True,
    )  # fmt: skip
    check_iteration(root, checkpoint, SPEC.classes)


def test_progress_record_and_plot(resumed: RunRecord) -> None:
    record = json.loads(progress_path(resumed.root).read_text())
    # The job's last word on a ground-truthed set: its own score against the truth.
    scored = score_run(resumed.root, resumed.root.parents[2] / "truth.star")[-1]
    assert scored.iteration == ITERATIONS
    assert record["truth_accuracy"] == round(scored.accuracy, 4) >= 0.9
    assert record == {
        **collect(resumed.root),
        "updated": record["updated"],
        "truth_accuracy": record["truth_accuracy"],
        "class_slices": record["class_slices"],  # the final picture's slices (test below)
    }
    assert record["finished"] and record["current_iteration"] == ITERATIONS
    first_kill, second_kill = resumed.kills
    assert record["resumed_from"] == [first_kill, second_kill - 1]
    assert [r["iteration"] for r in record["iterations"]] == list(range(1, ITERATIONS + 1))
    for row in record["iterations"]:
        assert 2 * SPEC.angpix <= row["resolution_angstrom"] <= 100
        assert sum(row["class_distribution"]) == pytest.approx(1, abs=1e-4)
        assert row["seconds"] is not None and row["seconds"] > 0
    changed = [r["changed_class_fraction"] for r in record["iterations"]]
    assert changed[0] == 1.0  # every particle gets its first class in iteration 1
    assert all(0 <= c <= 1 for c in changed)
    assert changed[-1] < 0.2  # the run has settled
    after_resume = [r["iteration"] for r in record["iterations"] if r["after_resume"]]
    assert after_resume == [first_kill + 1, second_kill]
    assert record["eta_seconds"] == 0.0
    with plot_path(resumed.root).open("rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    for row in record["iterations"]:
        for name in ("class_resolution_angstrom", "class_accuracy_rotation_deg"):
            assert len(row[name]) == SPEC.classes, (name, row)
        assert all(2 * SPEC.angpix <= r <= 999 for r in row["class_resolution_angstrom"] if r)
    newest = record["iterations"][-1]
    assert all(r is not None for r in newest["class_resolution_angstrom"])
    assert all(a is not None and a >= 0 for a in newest["class_accuracy_rotation_deg"])
    stored = compact(record, state="FINISHED")["classes"]
    assert len(stored) == SPEC.classes
    assert [c[0] for c in stored] == [round(x, 4) for x in newest["class_distribution"]]
    assert classes_path(resumed.root).is_file(), "the watcher drew the classes"


def test_the_class_picture_has_one_row_of_three_slices_per_class_with_content(
    uninterrupted: RunRecord, tmp_path: Path
) -> None:
    """A screenshot-like check: each of the K x 3 panels in the PNG holds an image, not a
    blank, and the slices differ between classes."""
    import matplotlib.image

    record = collect(uninterrupted.root)
    running = plot_classes(uninterrupted.root, record, path=tmp_path / "running.png")
    assert running is not None, "while the run goes: the XY plane alone, one per class"
    assert len(running.boxes) == SPEC.classes and all(len(row) == 1 for row in running.boxes)
    panels = plot_classes(uninterrupted.root, record, path=tmp_path / "classes.png", all_views=True)
    assert panels is not None and panels.iteration == ITERATIONS
    assert len(panels.boxes) == SPEC.classes and all(len(row) == 3 for row in panels.boxes)
    image = matplotlib.image.imread(panels.path)
    height = image.shape[0]
    crops = []
    for row in panels.boxes:
        for left, bottom, right, top in row:
            crop = image[height - top + 2 : height - bottom - 2, left + 2 : right - 2, :3]
            assert crop.size and float(crop.std()) > 0.02, "a panel without content"
            crops.append(crop)
    first_xy, second_xy = crops[0], crops[3]
    shape = tuple(min(a, b) for a, b in zip(first_xy.shape, second_xy.shape, strict=True))
    assert (
        abs(first_xy[: shape[0], : shape[1]] - second_xy[: shape[0], : shape[1]]).mean() > 0.01
    ), "two classes drew the same slice"


def test_class_maps_have_the_data_sets_geometry(uninterrupted: RunRecord) -> None:
    files = iteration_files(uninterrupted.root, ITERATIONS, SPEC.classes)
    with mrcfile.open(files["class002"]) as mrc:
        assert mrc.data.shape == (SPEC.box,) * 3
        assert float(mrc.voxel_size.x) == pytest.approx(SPEC.angpix)
