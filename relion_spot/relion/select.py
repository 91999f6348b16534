"""Chosen classes of a Class3D run → a particles STAR, as RELION's Select job leaves it.

    python -m relion_spot.relion.select --run Class3D/job005 --classes 1,3 [--iteration 25] \\
        --out Select/job007

The classify → select → reclassify loop's middle step. Reads one iteration of the run (default:
its newest complete one; a named iteration must be complete), keeps the particles whose
rlnClassNumber is among the chosen classes with the optics groups they use, and writes
``<out>/particles.star`` (RELION 5's header; renamed into place whole). The job is entered in the
project's pipeline as RELION's GUI enters an interactive subset selection
(``relion.select.interactive``: the run's optimiser STAR in, the particles STAR out), so the next
Class3D or Refine3D in the GUI can pick it. A rerun with the same choice leaves the file as it is
(requeue-safe); paths are relative to the project (the current directory).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError, check_iteration, run_classes, written_iterations
from .pipeline import PipelineError

RUN_NAME = "run"
"""The run root's name inside a Class3D job directory (the job template's --o)."""
OUTPUT = "particles.star"
SELECT_TYPE = "relion.select.interactive"
STAR_HEADER = "# version 50001\n"


class SelectError(ValueError):
    """The selection cannot be made as asked; the message names the value and what is accepted."""


@dataclass(frozen=True)
class Selection:
    root: Path
    """The run's root (``<job dir>/run``)."""
    iteration: int
    classes: int
    """K of the run."""
    chosen: tuple[int, ...]
    counts: dict[int, int]
    """Particles in each chosen class at that iteration."""

    @property
    def particles(self) -> int:
        return sum(self.counts.values())


def run_setting(project: Path, run: str, iteration: int, label: str) -> bool:
    """A switch of the run as its _optimiser.star records it (e.g. rlnDoSkipAlign)."""
    import starfile

    path = project / run / f"{RUN_NAME}_it{iteration:03d}_optimiser.star"
    try:
        general = starfile.read(path, always_dict=True)["optimiser_general"]
        return bool(int(general.get(label, 0)))
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise SelectError(f"{path}: {label} does not read ({error})") from None


def complete_iteration(
    project: Path, run: str, iteration: int | None = None
) -> tuple[Path, int, int]:
    """The run's root, the iteration to use (the named one, which must be complete, or the newest
    complete one) and its K — read only, as the controller checks a selection or a
    continuation before any node."""
    root = project / run / RUN_NAME
    written = [i for i in written_iterations(root) if i >= 1]
    if not written:
        raise SelectError(
            f"run {run!r} has no iteration in {project / run}: a Class3D job directory of this "
            "project (e.g. Class3D/job005) whose run has written one"
        )
    candidates = [iteration] if iteration is not None else written
    problems = []
    for candidate in candidates:
        try:
            if candidate not in written:
                raise CheckpointError(f"iteration {candidate} was not written")
            classes = run_classes(root, candidate)
            check_iteration(root, candidate, classes)
        except (CheckpointError, SelectError) as problem:
            problems.append(str(problem))
            continue
        return root, candidate, classes
    if iteration is not None:
        raise SelectError(
            f"iteration {iteration} of run {run!r} is not complete: {problems[0]} (its newest "
            f"written iteration is {written[0]})"
        )
    raise SelectError(f"run {run!r} has no complete iteration ({'; '.join(problems[:2])})")


def plan(project: Path, run: str, chosen: Sequence[int], iteration: int | None = None) -> Selection:
    """What would be selected, checked against the run as it is on disk (read only)."""
    root, found, classes = complete_iteration(project, run, iteration)
    bad = [c for c in chosen if not 1 <= c <= classes]
    if not chosen or bad:
        raise SelectError(
            f"classes {','.join(map(str, chosen)) or '(none)'} are not valid: class numbers "
            f"of run {run!r}, from 1 to its K={classes}"
        )
    return Selection(root, found, classes, tuple(sorted(set(chosen))), {})


def select(
    project: Path, run: str, chosen: Sequence[int], out: str, iteration: int | None = None
) -> Selection:
    """Write ``<out>/particles.star`` of the chosen classes (kept if already written)."""
    import starfile

    selection = plan(project, run, chosen, iteration)
    data = starfile.read(
        Path(f"{selection.root}_it{selection.iteration:03d}_data.star"), always_dict=True
    )
    particles = data["particles"]
    kept = particles[particles["rlnClassNumber"].isin(selection.chosen)]
    counts = {c: int((kept["rlnClassNumber"] == c).sum()) for c in selection.chosen}
    if kept.empty:
        raise SelectError(
            f"classes {','.join(map(str, selection.chosen))} of run {run!r} hold no particle at "
            f"iteration {selection.iteration}"
        )
    blocks = {}
    if "optics" in data:
        # As RELION's removeUnusedOpticsGroups: the groups still used, renumbered 1..n in both
        # tables (RELION indexes optics groups by their number).
        used = sorted(int(g) for g in kept["rlnOpticsGroup"].unique())
        renumber = {old: new for new, old in enumerate(used, start=1)}
        optics = data["optics"]
        optics = optics[optics["rlnOpticsGroup"].isin(used)].copy()
        optics["rlnOpticsGroup"] = optics["rlnOpticsGroup"].map(renumber)
        kept = kept.copy()
        kept["rlnOpticsGroup"] = kept["rlnOpticsGroup"].map(renumber)
        blocks["optics"] = optics
    blocks["particles"] = kept
    target = project / out / OUTPUT
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{OUTPUT}.{os.getpid()}")
    starfile.write(blocks, temporary)
    lines = temporary.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("# Created by the starfile"):
        lines[0] = STAR_HEADER
    text = "".join(lines)
    if target.is_file() and target.read_text() == text:
        temporary.unlink()
    else:
        temporary.write_text(text)
        os.replace(temporary, target)
    return Selection(
        selection.root, selection.iteration, selection.classes, selection.chosen, counts
    )


def register(project: Path, selection: Selection, out: str) -> bool:
    """The selection in the project's pipeline, as RELION's GUI enters a subset selection."""
    from relion_spot.jobs.job_dir import job_number

    from . import pipeline

    number = job_number(Path(out).name)
    if number is None:
        return False
    optimiser = selection.root.relative_to(project)
    process = pipeline.Process(
        name=f"{out.rstrip('/')}/",
        type_label=SELECT_TYPE,
        inputs=(
            pipeline.Node(
                f"{optimiser}_it{selection.iteration:03d}_optimiser.star",
                pipeline.CLASS3D_OPTIMISER_LABEL,
            ),
        ),
        outputs=(pipeline.Node(f"{out.rstrip('/')}/{OUTPUT}", pipeline.PARTICLES_LABEL),),
    )
    holder = f"relion-spot job {os.environ.get('SLURM_JOB_ID', '?')} on {os.uname().nodename}"
    return pipeline.register(project, process, job_number=number, holder=holder)


def parse_classes(text: str) -> tuple[int, ...]:
    """``1,3`` → (1, 3); anything else is a SelectError naming the text."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SelectError(
            f"classes {text!r} are not valid: class numbers separated by commas, e.g. 1,3"
        ) from None
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.select",
        description="Particles of chosen classes of a Class3D run, as RELION's Select job.",
    )
    parser.add_argument(
        "--run", required=True, help="the Class3D job directory, e.g. Class3D/job005"
    )
    parser.add_argument("--classes", required=True, help="class numbers, e.g. 1,3")
    parser.add_argument("--iteration", type=int, help="default: the newest complete one")
    parser.add_argument("--out", required=True, help="this job's directory, e.g. Select/job007")
    args = parser.parse_args(argv)
    project = Path.cwd()
    try:
        chosen = parse_classes(args.classes)
        selection = select(project, args.run, chosen, args.out, args.iteration)
    except (SelectError, OSError) as error:
        print(f"select: {error}", file=sys.stderr)
        return 2
    try:
        if register(project, selection, args.out):
            print(f"select: {args.out}/ added to the project's pipeline", file=sys.stderr)
    except (PipelineError, OSError) as error:  # the selection stands; the GUI entry is extra
        print(f"select: warning: not added to the pipeline: {error}", file=sys.stderr)
    (project / args.out / "RELION_JOB_EXIT_SUCCESS").touch()  # the GUI's "Succeeded"
    shares = ", ".join(f"class {c}: {n}" for c, n in selection.counts.items())
    print(
        f"select: {selection.particles} particles ({shares}) of {args.run} iteration "
        f"{selection.iteration} (K={selection.classes}) -> {args.out}/{OUTPUT}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
