"""``submit class3d --continue-from``: a finished run continued into a new job with real RELION 5,
the iteration named by the controller, a reclaim in the middle, the first run left as it was."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import starfile

from relion_spot.intake.prepare import JobPreparer, JobRejected
from relion_spot.jobs.parameters import from_mapping
from relion_spot.relion import pipeline
from relion_spot.relion.checkpoint import (
    CheckpointError,
    check_iteration,
    history_path,
    written_iterations,
)
from relion_spot.relion.score import score_run
from relion_spot.relion.synthetic import SyntheticResult

from .conftest import (
    ITERATIONS,
    SPEC,
    RunRecord,
    claimed_root,
    kill_when_complete,
    run_to_end,
    start_job,
)

pytestmark = pytest.mark.relion

CONTINUED_JOB = "103"
MORE = 3
"""Iterations the continuation adds."""


@dataclass
class Continued:
    root: Path
    source: Path
    note: str
    script: str
    logs: list[str]
    killed_at: int
    source_before: dict[str, int]


def _preparer(dataset: SyntheticResult) -> JobPreparer:
    return JobPreparer(instance_types=("g5.xlarge",), mode="local", data_root=dataset.out.parent)


@pytest.fixture(scope="module")
def continued(dataset: SyntheticResult, uninterrupted: RunRecord) -> Continued:
    """The uninterrupted run (10 iterations) continued to 13 as a new job: submitted naming only
    the job, reclaimed once its first iteration is complete, then requeued."""
    source_dir = uninterrupted.root.parent.relative_to(dataset.out)
    source_before = {p.name: p.stat().st_mtime_ns for p in uninterrupted.root.parent.iterdir()}
    params = from_mapping({
        "continue_from": str(source_dir), "iter": ITERATIONS + MORE,
        "project_dir": f"/data/{dataset.out.name}", "j": 2, "pool": 10,
    })  # fmt: skip
    prepared = _preparer(dataset)(params)
    (dataset.out / "class3d.sbatch").write_text(prepared.script)
    logs = dataset.out.parent / "logs"
    first = start_job(dataset.out, CONTINUED_JOB, 0, logs / "continued-0.log")
    root = claimed_root(dataset.out, CONTINUED_JOB, first)
    killed = kill_when_complete(first, root, ITERATIONS + 1)
    outputs = [first.output()]
    outputs.append(run_to_end(dataset.out, CONTINUED_JOB, 1, logs / "continued-1.log"))
    return Continued(
        root, uninterrupted.root, prepared.note, prepared.script, outputs, killed, source_before
    )


def test_the_controller_names_the_newest_complete_iteration_to_continue_from(
    continued: Continued,
) -> None:
    source = continued.source.parent.relative_to(continued.source.parents[2])
    assert continued.note == (
        f"preflight ok: continuing {source} (K={SPEC.classes}) from iteration {ITERATIONS} to "
        f"{ITERATIONS + MORE}; particles, reference and K are the run's own"
    )
    lines = [line.strip(" \\") for line in continued.script.splitlines()]
    start = lines.index(f"--continue {source}/run_it{ITERATIONS:03d}_optimiser.star")
    assert lines[start + 1] == f"--iter {ITERATIONS + MORE}"
    assert "--i " not in continued.script and "--K " not in continued.script


def test_the_new_job_writes_only_its_own_iterations_and_resumes_after_a_reclaim(
    continued: Continued,
) -> None:
    assert continued.root.parent != continued.source.parent
    # RELION writes the state it continues from into the new root first (without its
    # _sampling.star: never a resume point), then the iterations after it.
    written = written_iterations(continued.root)
    assert written == list(range(ITERATIONS + MORE, ITERATIONS - 1, -1)), written
    with pytest.raises(CheckpointError, match=r"_sampling\.star is missing"):
        check_iteration(continued.root, ITERATIONS, SPEC.classes)
    for iteration in range(ITERATIONS + 1, ITERATIONS + MORE + 1):
        check_iteration(continued.root, iteration, SPEC.classes)
    history = json.loads(history_path(continued.root).read_text())
    assert [s["action"] for s in history["starts"]] == ["fresh", "continue"]
    assert history["resumed_from"] == [continued.killed_at]
    own = f"{continued.root.relative_to(continued.root.parents[2])}_it{continued.killed_at:03d}"
    assert f"--continue {own}_optimiser.star" in continued.logs[1]


def test_the_run_it_continued_is_left_as_it_was(continued: Continued) -> None:
    after = {p.name: p.stat().st_mtime_ns for p in continued.source.parent.iterdir()}
    assert after == continued.source_before


def test_the_continuation_keeps_the_classification_and_enters_the_pipeline(
    continued: Continued, dataset: SyntheticResult
) -> None:
    final = score_run(continued.root, dataset.truth)[-1]
    assert final.iteration == ITERATIONS + MORE and final.accuracy >= 0.90
    entries = starfile.read(dataset.out / pipeline.PIPELINE, always_dict=True)
    edges = entries["pipeline_input_edges"]
    job = f"{continued.root.parent.relative_to(dataset.out)}/"
    source = continued.source.relative_to(dataset.out)
    assert set(edges[edges["rlnPipeLineEdgeProcess"] == job]["rlnPipeLineEdgeFromNode"]) == {
        f"{source}_it{ITERATIONS:03d}_optimiser.star"
    }


def test_a_continuation_the_run_cannot_give_is_refused_before_any_node(
    dataset: SyntheticResult, uninterrupted: RunRecord
) -> None:
    source = str(uninterrupted.root.parent.relative_to(dataset.out))
    given = {"project_dir": f"/data/{dataset.out.name}", "iter": ITERATIONS + 5}
    prepare = _preparer(dataset)
    started = time.monotonic()
    with pytest.raises(JobRejected, match=rf"^parameter iter = {ITERATIONS} is not valid: "):
        prepare(from_mapping({**given, "continue_from": source, "iter": ITERATIONS}))
    with pytest.raises(JobRejected, match=r"^preflight: iteration 40 of run .* is not complete"):
        prepare(from_mapping({**given, "continue_from": f"{source}:40", "iter": 45}))
    with pytest.raises(JobRejected, match=r"^preflight: run 'Class3D/job099' has no iteration"):
        prepare(from_mapping({**given, "continue_from": "Class3D/job099"}))
    with pytest.raises(JobRejected, match=r"^preflight: solvent mask /data/\w+/Masks/no.mrc does"):
        prepare(from_mapping({**given, "continue_from": source, "solvent_mask": "Masks/no.mrc"}))
    with pytest.raises(JobRejected, match=r"--particle_diameter 500 Å does not fit the run's box"):
        prepare(from_mapping({**given, "continue_from": source, "particle_diameter": 500}))
    assert time.monotonic() - started < 10
