"""What a job directory's results are: the maps, STAR files and pictures a lab takes home.

``relion-spot pull`` brings these back (relion_spot.exchange). Each job type keeps what a lab
opens in ChimeraX or the RELION GUI, not the run's checkpoints:

- Class3D: the newest complete iteration's class maps, model and particles STAR;
- Refine3D: once converged, the final map, both unfiltered half maps, model and particles STAR;
  before that, the newest complete iteration's half maps and STAR files;
- PostProcess: the sharpened map (masked and not), the mask, postprocess.star and the result;
- Select: the selected particles STAR;
- every job: run.out, run.err, note.txt, job.star and the project's own notes and pictures
  (the convergence plot and class slices) where present.

A picture of the FSC curve is drawn for a PostProcess (from postprocess.star) and for a converged
Refine3D (its gold-standard FSC from the model STAR), with matplotlib's defaults whatever
the project holds; a table that does not read leaves the picture out, not the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import (
    CheckpointError,
    check_iteration,
    final_files,
    has_finished,
    iteration_files,
    run_classes,
    written_iterations,
)

RUN_NAME = "run"
COMMON = (
    "run.out",
    "run.err",
    "note.txt",
    "job.star",
    "campaign_pick.json",
    "run_classes.png",
    "run_convergence.png",
)
POSTPROCESS = (
    "postprocess.mrc",
    "postprocess_masked.mrc",
    "postprocess.star",
    "mask.mrc",
    "logfile.pdf",
    "campaign_result.json",
)
FSC_PICTURE = "fsc.png"


class ResultsError(ValueError):
    """A job directory holds no results to take (yet); the message says why."""


@dataclass(frozen=True)
class Results:
    directory: Path
    files: tuple[Path, ...]
    """Existing files, each inside ``directory``."""
    fsc: tuple[str, list[float], dict[str, list[float]]] | None = None
    """What the FSC picture shows: its title, spatial frequencies (1/Å, RELION's rlnResolution)
    and the named curves."""


def _newest_complete(root: Path, *, halves: bool) -> dict[str, Path] | None:
    for iteration in written_iterations(root):
        if iteration < 1:
            continue
        try:
            # An auto-refine refines one map per half and writes no run_itNNN_model.star.
            classes = 1 if halves else run_classes(root, iteration)
            check_iteration(root, iteration, classes, halves=halves)
        except CheckpointError:
            continue
        return iteration_files(root, iteration, classes, halves=halves)
    return None


def _class3d(directory: Path) -> list[Path]:
    files = _newest_complete(directory / RUN_NAME, halves=False)
    if files is None:
        raise ResultsError(f"{directory.name} has no complete iteration yet")
    return [p for kind, p in files.items() if kind not in ("optimiser", "sampling")]


def _refine3d(directory: Path) -> list[Path]:
    root = directory / RUN_NAME
    if has_finished(root):
        return [p for kind, p in final_files(root).items() if kind != "optimiser"]
    files = _newest_complete(root, halves=True)
    if files is None:
        raise ResultsError(f"{directory.name} has no complete iteration yet")
    return [p for kind, p in files.items() if kind not in ("optimiser", "sampling")]


def _postprocess(directory: Path) -> list[Path]:
    if not (directory / "postprocess.mrc").is_file():
        raise ResultsError(f"{directory.name} has written no postprocess.mrc yet")
    return [directory / name for name in POSTPROCESS]


def _select(directory: Path) -> list[Path]:
    if not (directory / "particles.star").is_file():
        raise ResultsError(f"{directory.name} has written no particles.star yet")
    return [directory / "particles.star"]


KINDS = {
    "Class3D": _class3d,
    "Refine3D": _refine3d,
    "PostProcess": _postprocess,
    "Select": _select,
}


def _fsc(directory: Path, kind: str) -> tuple[str, list[float], dict[str, list[float]]] | None:
    """The FSC curves to draw, read with starfile; None where the job has none."""
    import starfile

    if kind == "PostProcess":
        star = directory / "postprocess.star"
        columns = {
            "corrected": "rlnFourierShellCorrelationCorrected",
            "unmasked maps": "rlnFourierShellCorrelationUnmaskedMaps",
            "masked maps": "rlnFourierShellCorrelationMaskedMaps",
            "phase-randomised masked maps": (
                "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"
            ),
        }
        block = "fsc"
    elif kind == "Refine3D" and has_finished(directory / RUN_NAME):
        star = directory / f"{RUN_NAME}_model.star"
        columns = {"gold-standard": "rlnGoldStandardFsc"}
        block = "model_class_1"
    else:
        return None
    try:
        table = starfile.read(star, always_dict=True)[block]
        frequency = [float(v) for v in table["rlnResolution"]]
    except (OSError, KeyError, ValueError, TypeError):
        return None  # the picture is a convenience: the STAR file itself is exported
    curves = {
        name: [float(v) for v in table[column]]
        for name, column in columns.items()
        if column in table
    }
    return f"{kind} {directory.name}", frequency, curves


def collect(directory: Path) -> Results:
    """The results of the job at ``directory`` (``<project>/<JobType>/jobNNN``)."""
    kind = directory.parent.name
    take = KINDS.get(kind)
    if take is None:
        raise ResultsError(
            f"{directory.parent.name}/{directory.name}: no results are known for a "
            f"{kind} job (one of {', '.join(KINDS)})"
        )
    files = take(directory) + [directory / name for name in COMMON]
    kept = tuple(dict.fromkeys(p for p in files if p.is_file()))
    return Results(directory=directory, files=kept, fsc=_fsc(directory, kind))


def draw_fsc(fsc: tuple[str, list[float], dict[str, list[float]]], path: Path) -> Path:
    """The FSC curves against spatial frequency, with the 0.143 line, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, frequency, curves = fsc
    with matplotlib.style.context("default"):  # not a matplotlibrc planted in the project
        figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
        for name, values in curves.items():
            axes.plot(frequency, values, label=name)
        axes.axhline(0.143, color="grey", linestyle="--", linewidth=0.8, label="0.143")
        axes.set_xlabel("spatial frequency (1/Å)")
        axes.set_ylabel("FSC")
        axes.set_ylim(-0.1, 1.05)
        axes.set_title(title)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return path
