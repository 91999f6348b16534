"""A job's report file as the node's root forwarder reads it: what a job may write is checked
field by field, and anything else is refused with one line naming what is wrong."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relion_spot.intake.report import MAX_CLASSES, MAX_REPORT_BYTES, JobReport, ReportError

GOOD_PROGRESS: dict[str, Any] = {
    "state": "RUNNING",
    "current_iteration": 3,
    "requested_iterations": 25,
    "resolution_angstrom": 12.5,
    "history": [[3, 12.5, 0.1, [0.5, 0.5]]],
    "classes": [[0.5, 14.2, 2.5, 1.0], [0.5, None, None, None]],
}


SLICE = base64.b64encode(bytes(32 * 32)).decode()


def _report(**progress: Any) -> bytes:
    return json.dumps({"progress": {**GOOD_PROGRESS, **progress}, "log_tail": "it 3"}).encode()


def test_a_report_with_the_class_slices_is_read() -> None:
    sliced = {"iteration": 3, "views": ["XY", "XZ", "YZ"], "pixels": 32,
              "slices": [[SLICE] * 3] * 12}  # fmt: skip
    assert JobReport.from_json(_report(class_slices=sliced)).progress["class_slices"] == sliced


def test_a_cpu_jobs_end_and_a_scored_run_are_reports() -> None:
    assert JobReport.from_json(_report(state="FAILED")).progress["state"] == "FAILED"
    scored = JobReport.from_json(_report(state="FINISHED", truth_accuracy=0.955))
    assert scored.progress["truth_accuracy"] == 0.955


def test_a_report_with_per_class_figures_is_read() -> None:
    report = JobReport.from_json(_report())
    assert report.progress["classes"][0] == [0.5, 14.2, 2.5, 1.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not JSON"),
        (json.dumps({"progress": GOOD_PROGRESS}).encode(), "exactly progress and log_tail"),
        (_report(state="DONE"), "state 'DONE' is not one of"),
        (_report(owner="someone"), "unknown progress fields ['owner']"),
        (_report(current_iteration=-1), "current_iteration = -1 is not an iteration count"),
        (_report(resolution_angstrom="fine"), "resolution_angstrom = 'fine' is not"),
        (_report(classes="all"), "classes must be at most"),
        (_report(classes=[[0.5, 1, 2]]), "classes must be at most"),
        (_report(classes=[[0.5, "x", 2, 3]]), "classes must be at most"),
        (_report(classes=[[0.1, 1, 1, 1]] * (MAX_CLASSES + 1)), "classes must be at most"),
        (b" " * (MAX_REPORT_BYTES + 1), "more than"),
        (_report(truth_accuracy=1.5), "truth_accuracy = 1.5 is not a fraction"),
        (_report(truth_accuracy="high"), "truth_accuracy = 'high' is not a fraction"),
        (
            _report(
                class_slices={"iteration": 3, "views": ["XY"], "pixels": 32, "slices": [["AAAA"]]}
            ),
            "class_slices must be",
        ),
        (
            _report(
                class_slices={
                    "iteration": 3,
                    "views": ["XY"],
                    "pixels": 32,
                    "slices": [[SLICE]] * 13,
                }
            ),
            "class_slices must be",
        ),
        (
            _report(
                class_slices={
                    "iteration": 3,
                    "views": ["XY", "XZ"],
                    "pixels": 32,
                    "slices": [[SLICE, SLICE]],
                }
            ),
            "class_slices must be",
        ),
        (
            _report(
                class_slices={
                    "iteration": 3,
                    "views": ["XY"],
                    "pixels": 32,
                    "slices": [[SLICE]],
                    "extra": 1,
                }
            ),
            "class_slices must be",
        ),
    ],
    ids=[
        "not-utf8",
        "no-log-tail",
        "bad-state",
        "unknown-field",
        "negative-iteration",
        "text-resolution",
        "classes-not-a-list",
        "class-row-short",
        "class-row-text",
        "too-many-classes",
        "too-big",
        "accuracy-above-one",
        "accuracy-text",
        "slice-short",
        "too-many-classes-sliced",
        "two-views",
        "slices-extra-field",
    ],
)
def test_a_report_that_is_not_one_is_refused_by_name(data: bytes, message: str) -> None:
    with pytest.raises(ReportError) as refused:
        JobReport.from_json(data)
    assert message in str(refused.value)
