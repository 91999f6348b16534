"""A campaign's steps after its Class3D: the class to refine, the refinement's inputs, and the
PostProcess of the refined map (mask, B-factor sharpening, gold-standard FSC).

    python -m relion_spot.relion.campaign refine-inputs --class3d SUBMISSION --class best \\
        --out Refine3D/job008
    python -m relion_spot.relion.campaign postprocess --refine SUBMISSION --out PostProcess/job009

Each step finds the step before it by that step's submission id (its job directory's claim,
relion_spot.jobs.job_dir), never by a Slurm job id: ids restart per cluster and per controller.
Both are requeue-safe: the refinement's inputs are written once (a requeued attempt finds them
and the run continues from them), and the PostProcess is made again whole.

The class to refine, ``best`` (BEST_CLASS_RULE): among the classes holding at least half an
even share of the particles (1/(2K)), the one with the finest estimated resolution at the run's
last iteration; a tie goes to the larger class. A class too small to refine on its own is never
picked, however fine its resolution looks (a few particles give a noisy, over-fitted estimate).

The mask (MASK_RULE): the refined map low-passed to 15 Å (as RELION's mask_create --lowpass
does) and thresholded at 10 % of that map's maximum, extended by 4 Å and given a soft edge of
8 Å (at least one and three pixels). PostProcess then sharpens with the
B-factor it fits from 10 Å on (RELION's default). A map coarser than 10 Å has no Guinier range
to fit (RELION would still report a fitted figure from an empty range), so it is made again
unsharpened (B-factor 0), as a lab would do by hand. PostProcess reports the gold-standard
resolution at FSC 0.143 with the mask's effect corrected by phase randomisation.

Where the project is a synthetic set (its manifest and truth), the refined map (the mean of the
two unfiltered half maps, unmasked) is compared with the true volume of the class most of the
refined particles came from: the resolution at which their FSC falls below 0.5 is the map's
true resolution, beside the gold-standard estimate (which is masked). Only the box is checked:
the refinement starts from the set's own reference, so map and truth share frame and hand. A
truth that cannot be read leaves that figure out, never the PostProcess.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, check_final, written_iterations
from .select import SelectError, complete_iteration, select
from .tools import RelionToolError, run_tool

BEST_CLASS_RULE = (
    "among classes with at least 1/(2K) of the particles, the finest estimated resolution "
    "(ties: the larger class)"
)
MASK_RULE = "refined map low-passed to 15 Å, at 10 % of its maximum, extended 4 Å, soft edge 8 Å"
MASK_LOWPASS_ANGSTROM = 15.0
MASK_THRESHOLD_FRACTION = 0.10
MASK_EXTEND_ANGSTROM = 4.0
MASK_SOFT_EDGE_ANGSTROM = 8.0
AUTOB_LOWRES_ANGSTROM = 10.0
TRUTH_FSC_THRESHOLD = 0.5
PICK_FILE = "campaign_pick.json"
RESULT_FILE = "campaign_result.json"
REFERENCE = "reference.mrc"
PARTICLES = "particles.star"
RUN = "run"
POSTPROCESS_ROOT = "postprocess"
TOLERATED = ("gs: not found", "ERROR in executing: gs ")
"""RELION's PostProcess draws its PDF log with ghostscript, which the image does not carry: the
maps, the STAR and the FSC are written all the same (an empty PDF instead)."""


class CampaignError(ValueError):
    """A step cannot go on; the message names what is missing or wrong."""


@dataclass(frozen=True)
class Pick:
    run: str
    """The Class3D job directory, relative to the project."""
    iteration: int
    classes: int
    chosen: int
    share: float
    resolution_angstrom: float | None
    rule: str
    particles: int = 0


def job_dir_of(project: Path, submission_id: str) -> Path:
    """The job directory a campaign step claimed (by its submission id)."""
    from relion_spot.jobs.job_dir import Owner, find

    claimed = find(project, Owner(cluster="", slurm_job_id="", submission_id=submission_id))
    if claimed is None:
        raise CampaignError(
            f"no job directory in {project} is claimed by submission {submission_id}: the "
            "step before this one never started here"
        )
    return claimed.directory


def pick_class(project: Path, run: str, choice: str) -> Pick:
    """The class to refine: ``choice`` is a class number or ``best`` (BEST_CLASS_RULE)."""
    import starfile

    try:
        root, iteration, classes = complete_iteration(project, run)
    except SelectError as err:
        raise CampaignError(str(err)) from None
    model = starfile.read(Path(f"{root}_it{iteration:03d}_model.star"), always_dict=True)
    table = model["model_classes"]
    shares = [float(v) for v in table["rlnClassDistribution"]]
    resolutions = [float(v) for v in table["rlnEstimatedResolution"]]
    if choice == "best":
        floor = 1.0 / (2 * classes)
        eligible = [k for k in range(classes) if shares[k] >= floor] or list(range(classes))
        best = min(eligible, key=lambda k: (resolutions[k], -shares[k]))
        chosen, rule = best + 1, BEST_CLASS_RULE
    else:
        if not choice.isdigit() or not 1 <= int(choice) <= classes:
            raise CampaignError(
                f"class {choice!r} is not valid: 'best' or a class number of {run} from 1 to "
                f"its K={classes}"
            )
        chosen, rule = int(choice), "chosen by the lab"
    resolution = resolutions[chosen - 1]
    return Pick(
        run=run, iteration=iteration, classes=classes, chosen=chosen,
        share=round(shares[chosen - 1], 4),
        resolution_angstrom=round(resolution, 2) if math.isfinite(resolution) else None,
        rule=rule,
    )  # fmt: skip


def refine_inputs(project: Path, class3d_submission: str, choice: str, out: str) -> Pick:
    """``<out>/particles.star`` (the picked class's particles, as RELION's Select writes them)
    and ``<out>/reference.mrc`` (its map), once: a requeued attempt finds them and keeps them,
    so the refinement continues from the inputs it started with."""
    target = project / out
    pick_path = target / PICK_FILE
    if pick_path.is_file() and (target / PARTICLES).is_file() and (target / REFERENCE).is_file():
        return Pick(**json.loads(pick_path.read_text()))
    run = str(job_dir_of(project, class3d_submission).relative_to(project))
    pick = pick_class(project, run, choice)
    try:
        selection = select(project, run, [pick.chosen], out, pick.iteration)
    except SelectError as err:
        raise CampaignError(str(err)) from None
    class_map = project / run / f"{RUN}_it{pick.iteration:03d}_class{pick.chosen:03d}.mrc"
    partial = target / f".{REFERENCE}.partial"
    shutil.copyfile(class_map, partial)
    os.replace(partial, target / REFERENCE)
    pick = Pick(**{**asdict(pick), "particles": selection.particles})
    partial = target / f".{PICK_FILE}.partial"
    partial.write_text(json.dumps(asdict(pick), indent=2) + "\n")
    os.replace(partial, pick_path)
    return pick


def mask_settings(map_path: Path) -> tuple[float, int, int, float]:
    """MASK_RULE for one map: threshold, extension and soft edge (pixels), pixel size."""
    import mrcfile
    import numpy as np

    with mrcfile.open(map_path, permissive=False) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
        angpix = float(mrc.voxel_size.x)
    if not angpix > 0 or data.ndim != 3 or len(set(data.shape)) != 1:
        raise CampaignError(f"{map_path.name} is not a cubic map with a pixel size")
    threshold = MASK_THRESHOLD_FRACTION * float(
        lowpassed(data, angpix, MASK_LOWPASS_ANGSTROM).max()
    )
    if not threshold > 0:
        raise CampaignError(f"{map_path.name} has no positive density to make a mask from")
    extend = max(1, round(MASK_EXTEND_ANGSTROM / angpix))
    soft = max(3, round(MASK_SOFT_EDGE_ANGSTROM / angpix))
    return threshold, extend, soft, angpix


def _shells(box: int) -> Any:
    """Each voxel's Fourier shell (rounded radius, as RELION bins) on numpy's rfftn grid."""
    import numpy as np

    full = np.fft.fftfreq(box) * box
    half = np.fft.rfftfreq(box) * box
    radius = np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + half[None, None, :] ** 2)
    return np.rint(radius).astype(np.int32)


def lowpassed(data: Any, angpix: float, resolution: float) -> Any:
    """``data`` without the Fourier shells finer than ``resolution`` Å (a hard edge)."""
    import numpy as np

    box = data.shape[0]
    keep = _shells(box) <= box * angpix / resolution
    transform = np.fft.rfftn(data) * keep
    return np.fft.irfftn(transform, s=data.shape, axes=(0, 1, 2)).astype(np.float32)


def fsc_resolution(
    first: Any, second: Any, angpix: float, threshold: float = TRUTH_FSC_THRESHOLD
) -> tuple[float | None, list[float]]:
    """Resolution (Å) of the last shell before the FSC of two maps of one box falls below
    ``threshold`` (Nyquist when it never does; None when the first shell already does), and
    the curve by shell."""
    import numpy as np

    if first.shape != second.shape or first.ndim != 3 or len(set(first.shape)) != 1:
        raise CampaignError(f"maps of shapes {first.shape} and {second.shape}: not one cube")
    box = first.shape[0]
    f1, f2 = np.fft.rfftn(first.astype(np.float32)), np.fft.rfftn(second.astype(np.float32))
    shell = _shells(box).ravel()
    # rfftn keeps half of the transform: the other half mirrors it, and each ratio is the same.
    cross = np.bincount(shell, (f1 * np.conj(f2)).real.ravel())
    power1 = np.bincount(shell, (np.abs(f1) ** 2).ravel())
    power2 = np.bincount(shell, (np.abs(f2) ** 2).ravel())
    curve = [
        float(cross[s] / math.sqrt(power1[s] * power2[s])) if power1[s] * power2[s] > 0 else 0.0
        for s in range(1, box // 2 + 1)
    ]
    for s, value in enumerate(curve, start=1):
        if value < threshold:
            return (round(box * angpix / (s - 1), 2) if s > 1 else None), curve
    return round(2 * angpix, 2), curve


def truth_resolution(root: Path, volume: Path) -> float | None:
    """The refined map (mean of the unfiltered half maps) against the true volume at FSC 0.5."""
    import mrcfile
    import numpy as np

    halves = []
    for half in ("half1", "half2"):
        with mrcfile.open(Path(f"{root}_{half}_class001_unfil.mrc"), permissive=False) as mrc:
            halves.append(np.asarray(mrc.data, dtype=np.float32))
            angpix = float(mrc.voxel_size.x)
    with mrcfile.open(volume, permissive=False) as mrc:
        truth = np.asarray(mrc.data, dtype=np.float32)
    resolution, _ = fsc_resolution((halves[0] + halves[1]) / 2, truth, angpix)
    return resolution


def truth_volume(project: Path, particles_star: Path) -> Path | None:
    """The true volume of the class most of these particles were made from, where the project
    is a synthetic set; None for a lab's own data."""
    import starfile

    from .synthetic import MANIFEST, load_manifest

    if not (project / MANIFEST).is_file():
        return None
    manifest = load_manifest(project)
    truth = starfile.read(project / manifest["files"]["truth"], always_dict=True)["particles"]
    labels = dict(zip(truth["rlnImageName"], truth["rlnClassNumber"].astype(int), strict=True))
    chosen = starfile.read(particles_star, always_dict=True)["particles"]["rlnImageName"]
    counts: dict[int, int] = {}
    for name in chosen:
        if name in labels:
            counts[labels[name]] = counts.get(labels[name], 0) + 1
    if not counts:
        return None
    majority = max(counts, key=lambda k: counts[k])
    volumes = manifest["files"]["volumes"]
    if not 1 <= majority <= len(volumes):
        return None
    return project / volumes[majority - 1]


def postprocess(project: Path, refine_submission: str, out: str) -> dict[str, Any]:
    """Mask, sharpen and measure the refinement's map into ``<out>``; the figures, also kept as
    ``<out>/campaign_result.json``."""
    refine_dir = job_dir_of(project, refine_submission)
    root = refine_dir / RUN
    try:
        check_final(root)
    except CheckpointError as err:
        newest = written_iterations(root)
        raise CampaignError(
            f"{refine_dir.relative_to(project)} has not converged ({err}; newest iteration "
            f"{newest[0] if newest else 'none'})"
        ) from None
    target = project / out
    target.mkdir(parents=True, exist_ok=True)
    relative_root = root.relative_to(project)
    threshold, extend, soft, angpix = mask_settings(Path(f"{root}_class001.mrc"))
    mask = f"{out}/mask.mrc"
    log = target / "run.out"
    run_tool(
        ["relion_mask_create", "--i", f"{relative_root}_class001.mrc", "--o", mask,
         "--lowpass", MASK_LOWPASS_ANGSTROM, "--angpix", angpix,
         "--ini_threshold", f"{threshold:.6g}", "--extend_inimask", extend,
         "--width_soft_edge", soft],
        cwd=project, log=log,
    )  # fmt: skip
    postprocess_words: list[str | float] = [
        "relion_postprocess", "--i", f"{relative_root}_half1_class001_unfil.mrc",
        "--mask", mask, "--o", f"{out}/{POSTPROCESS_ROOT}", "--angpix", angpix,
    ]  # fmt: skip
    star = target / f"{POSTPROCESS_ROOT}.star"
    run_tool(
        [*postprocess_words, "--auto_bfac", "--autob_lowres", AUTOB_LOWRES_ANGSTROM],
        cwd=project, log=log, tolerated=TOLERATED,
    )  # fmt: skip
    resolution, bfactor = _final_figures(star, project)
    sharpened = resolution < AUTOB_LOWRES_ANGSTROM
    if not sharpened:
        run_tool([*postprocess_words, "--adhoc_bfac", 0], cwd=project, log=log, tolerated=TOLERATED)
        resolution, bfactor = _final_figures(star, project)
    result: dict[str, Any] = {
        "refine_run": str(relative_root),
        "resolution_angstrom": round(resolution, 2),
        "bfactor": round(bfactor, 1),
        "sharpened": sharpened,
        "mask": {"rule": MASK_RULE, "threshold": round(threshold, 6), "extend_px": extend,
                 "soft_edge_px": soft},
        "truth_resolution_angstrom": None,
    }  # fmt: skip
    try:
        volume = truth_volume(project, refine_dir / PARTICLES)
        if volume is not None:
            result["truth_resolution_angstrom"] = truth_resolution(root, volume)
            result["truth_volume"] = str(volume.relative_to(project))
    except (CampaignError, ValueError, KeyError, OSError) as err:
        print(f"campaign: warning: no comparison with the truth ({err})", file=sys.stderr)
    partial = target / f".{RESULT_FILE}.partial"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, target / RESULT_FILE)
    _register(project, out, f"{relative_root}_half1_class001_unfil.mrc", mask)
    (target / "RELION_JOB_EXIT_SUCCESS").touch()
    return result


def _register(project: Path, out: str, half_map: str, mask: str) -> None:
    """The PostProcess in the project's pipeline, as RELION's GUI enters one; a pipeline that
    cannot be written is a warning (the maps and figures are what matter)."""
    from relion_spot.jobs.job_dir import job_number

    from . import pipeline

    number = job_number(Path(out).name)
    if number is None:
        return
    holder = f"relion-spot job {os.environ.get('SLURM_JOB_ID', '?')} on {os.uname().nodename}"
    process = pipeline.postprocess_process(out, half_map, mask)
    try:
        pipeline.register(project, process, job_number=number, holder=holder)
    except (pipeline.PipelineError, OSError) as err:
        print(f"campaign: warning: {out} not added to the pipeline: {err}", file=sys.stderr)


def _final_figures(star: Path, project: Path) -> tuple[float, float]:
    """PostProcess's final resolution and the B-factor it sharpened with."""
    import starfile

    try:
        general = starfile.read(star, always_dict=True)["general"]
        return float(general["rlnFinalResolution"]), float(
            general.get("rlnBfactorUsedForSharpening", 0.0)
        )
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CampaignError(f"{star.relative_to(project)} does not read ({err})") from None


def _report(state: str, figures: dict[str, Any]) -> None:
    """The step's last word to its submission's record (inside a job the intake submitted)."""
    from relion_spot.intake.report import ProgressReporter

    reporter = ProgressReporter.from_env(os.environ)
    if reporter is not None:
        reporter.publish(figures, state=state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.campaign",
        description="The steps of a campaign after Class3D (run in the project directory).",
    )
    steps = parser.add_subparsers(dest="step", required=True)
    inputs = steps.add_parser("refine-inputs", help="the picked class's particles and map")
    inputs.add_argument("--class3d", required=True, help="the Class3D step's submission id")
    inputs.add_argument("--class", dest="choice", default="best", help="'best' or a number")
    inputs.add_argument("--out", required=True, help="this job's directory, e.g. Refine3D/job008")
    post = steps.add_parser("postprocess", help="mask, sharpen and measure the refined map")
    post.add_argument("--refine", required=True, help="the Refine3D step's submission id")
    post.add_argument("--out", required=True, help="this job's directory")
    args = parser.parse_args(argv)
    project = Path.cwd()
    if args.step == "refine-inputs":
        try:
            pick = refine_inputs(project, args.class3d, args.choice, args.out)
        except (CampaignError, OSError) as err:
            print(f"campaign: {err}", file=sys.stderr)
            return 2
        print(
            f"campaign: refining class {pick.chosen} of {pick.run} (iteration {pick.iteration}, "
            f"K={pick.classes}: {pick.share:.0%} of the particles, {pick.particles} particles, "
            f"{pick.resolution_angstrom} Å; {pick.rule})"
        )
        return 0
    try:
        result = postprocess(project, args.refine, args.out)
    except (CampaignError, RelionToolError, OSError, ValueError) as err:
        print(f"campaign: {err}", file=sys.stderr)
        _report("FAILED", {})
        return 2
    truth = result["truth_resolution_angstrom"]
    print(
        f"campaign: PostProcess of {result['refine_run']}: {result['resolution_angstrom']} Å "
        f"(gold-standard FSC 0.143), B-factor {result['bfactor']}"
        + (f"; {truth} Å against the true volume (FSC 0.5)" if truth is not None else "")
    )
    _report(
        "FINISHED",
        {
            "resolution_angstrom": result["resolution_angstrom"],
            "bfactor": result["bfactor"],
            "truth_resolution_angstrom": truth,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
