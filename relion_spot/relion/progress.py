"""Progress of a RELION classification, read from the files it writes after every iteration.

Per iteration: resolution and log-likelihood (_model.star, model_general), class distribution
(model_classes), the fraction of particles that changed class (_optimiser.star), and the wall
seconds it took. Seconds come from the _sampling.star modification times: RELION writes that
file once per iteration and, unlike the other files, does not rewrite it when a run continues,
so a resume does not disturb the earlier figures. The record is one JSON file beside the run,
replaced atomically, plus a convergence plot (PNG) with the resumes marked.

The watcher shares the job's CPUs with RELION, so it keeps each iteration's figures and reads an
iteration's STAR files again only when they change (a resume rewrites the checkpoint's): an update
parses the new iteration only, not every iteration so far. starfile (and with it pandas) is
imported on first use, so a fresh job starts RELION without waiting for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from relion_spot.relion.checkpoint import (
    has_finished,
    iteration_root,
    read_history,
    written_iterations,
)

if TYPE_CHECKING:
    import numpy as np

    from relion_spot.intake.report import ProgressReporter

_UNSET = 9.0e6
"""RELION writes 9.999999e+06 for figures it has not computed yet (e.g. changes at iteration 1)."""


@dataclass
class IterationProgress:
    iteration: int
    resolution_angstrom: float | None
    log_likelihood: float | None
    class_distribution: list[float]
    changed_class_fraction: float | None
    seconds: float | None
    """Wall seconds since the previous iteration's files; includes downtime after a reclaim."""
    after_resume: bool
    class_resolution_angstrom: list[float | None] = field(default_factory=list)
    """Each class's estimated resolution (model_classes rlnEstimatedResolution)."""
    class_accuracy_rotation_deg: list[float | None] = field(default_factory=list)
    class_accuracy_translation_angstrom: list[float | None] = field(default_factory=list)


def progress_path(root: Path) -> Path:
    return root.parent / f"{root.name}_progress.json"


def plot_path(root: Path) -> Path:
    return root.parent / f"{root.name}_convergence.png"


def classes_path(root: Path) -> Path:
    return root.parent / f"{root.name}_classes.png"


def _figure(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if math.isnan(number) or math.isinf(number) or abs(number) >= _UNSET:
        return None
    return number


def _general(blocks: dict, name: str) -> dict:
    block = blocks[name]
    return block if isinstance(block, dict) else block.iloc[0].to_dict()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def model_star(stem: str) -> str:
    """An iteration's model STAR: a classification's own, or an auto-refine's first half's
    (both halves carry the same resolution and accuracy figures)."""
    plain = f"{stem}_model.star"
    if os.path.exists(plain):
        return plain
    half = f"{stem}_half1_model.star"
    return half if os.path.exists(half) else plain


def read_iteration(root: Path, iteration: int) -> tuple[IterationProgress, int] | None:
    """One iteration's figures and its requested total, or None while its files are unreadable."""
    import starfile

    stem = iteration_root(root, iteration)
    try:
        model = starfile.read(model_star(stem), always_dict=True)
        optimiser = _general(
            starfile.read(f"{stem}_optimiser.star", always_dict=True), "optimiser_general"
        )
        general = _general(model, "model_general")
        classes = model["model_classes"]
        distribution = [round(float(v), 6) for v in classes["rlnClassDistribution"]]
        per_class = {
            name: [_figure(v) for v in classes[name]] if name in classes else []
            for name in (
                "rlnEstimatedResolution",
                "rlnAccuracyRotations",
                "rlnAccuracyTranslationsAngst",
            )
        }
    except Exception:  # a file being written or cut short: this iteration is not readable yet
        return None
    progress = IterationProgress(
        iteration=iteration,
        resolution_angstrom=_figure(general.get("rlnCurrentResolution")),
        log_likelihood=_figure(general.get("rlnLogLikelihood")),
        class_distribution=distribution,
        changed_class_fraction=_figure(optimiser.get("rlnChangesOptimalClasses")),
        seconds=None,
        after_resume=False,
        class_resolution_angstrom=per_class["rlnEstimatedResolution"],
        class_accuracy_rotation_deg=per_class["rlnAccuracyRotations"],
        class_accuracy_translation_angstrom=per_class["rlnAccuracyTranslationsAngst"],
    )
    return progress, int(optimiser.get("rlnNumberOfIterations", 0))


Stamp = tuple[int, int, int, int]
"""Modification time (ns) and size of an iteration's model and optimiser STARs."""
IterationCache = dict[int, tuple[Stamp, IterationProgress, int]]
"""Figures already read, by iteration, with the stamp of the files they were read from."""


def _stamp(root: Path, iteration: int) -> Stamp | None:
    stem = iteration_root(root, iteration)
    try:
        model = os.stat(model_star(stem))
        optimiser = os.stat(f"{stem}_optimiser.star")
    except FileNotFoundError:
        return None
    return model.st_mtime_ns, model.st_size, optimiser.st_mtime_ns, optimiser.st_size


def _read_cached(
    root: Path, iteration: int, cache: IterationCache | None
) -> tuple[IterationProgress, int] | None:
    """read_iteration, answered from the cache while the iteration's files are unchanged."""
    if cache is None:
        return read_iteration(root, iteration)
    stamp = _stamp(root, iteration)
    known = cache.get(iteration)
    if stamp is not None and known is not None and known[0] == stamp:
        return replace(known[1]), known[2]
    read = read_iteration(root, iteration)
    # Kept only when nothing was written while it was read: a half-written file never sticks.
    if read is not None and stamp is not None and _stamp(root, iteration) == stamp:
        cache[iteration] = (stamp, replace(read[0]), read[1])
    else:
        cache.pop(iteration, None)
    return read


def _finished_at(root: Path, iteration: int) -> float | None:
    if iteration == 0:
        return _mtime(Path(model_star(iteration_root(root, 0))))
    return _mtime(Path(f"{iteration_root(root, iteration)}_sampling.star"))


def collect(
    root: Path, requested_iterations: int | None = None, *, cache: IterationCache | None = None
) -> dict:
    """The progress record of the run at root (RELION's --o), from the files on disk now.

    ``cache`` (kept by the caller between calls) spares reading unchanged iterations again."""
    history = read_history(root)
    resumed_from = [int(i) for i in history.get("resumed_from", [])]
    rows: list[IterationProgress] = []
    requested = requested_iterations or 0
    for iteration in sorted(written_iterations(root)):
        if iteration < 1:
            continue
        read = _read_cached(root, iteration, cache)
        if read is None:
            continue
        row, total = read
        requested = requested_iterations or total or requested
        end, begin = _finished_at(root, iteration), _finished_at(root, iteration - 1)
        if end is not None and begin is not None and end >= begin:
            row.seconds = round(end - begin, 2)
        row.after_resume = (iteration - 1) in resumed_from
        rows.append(row)

    current = rows[-1].iteration if rows else 0
    steady = [r.seconds for r in rows if r.seconds is not None and not r.after_resume]
    per_iteration = statistics.median(steady[-3:]) if steady else None
    remaining = max(requested - current, 0)
    eta = round(per_iteration * remaining, 1) if per_iteration is not None else None
    if remaining == 0 and rows:
        eta = 0.0
    finished = bool(rows) and current >= requested > 0
    resolution = rows[-1].resolution_angstrom if rows else None
    if Path(f"{iteration_root(root, 0)}_half1_model.star").exists():
        # An auto-refine: RELION decides when it has converged, so there is no count to reach
        # and no time left to predict; its final resolution is the final model's.
        finished = has_finished(root)
        requested, eta = 0, 0.0 if finished else None
        if finished:
            resolution = final_resolution(root)
    return {
        "run": root.name,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "requested_iterations": requested,
        "current_iteration": current,
        "finished": finished,
        "resolution_angstrom": resolution,
        "seconds_per_iteration": per_iteration,
        "eta_seconds": eta,
        "resumes": history.get("resumes", 0),
        "resumed_from": resumed_from,
        "iterations": [asdict(r) for r in rows],
    }


def final_resolution(root: Path) -> float | None:
    """The gold-standard resolution of a converged auto-refine (its final model, unmasked)."""
    import starfile

    try:
        general = _general(starfile.read(f"{root}_model.star", always_dict=True), "model_general")
    except (OSError, ValueError, KeyError):
        return None
    return _figure(general.get("rlnCurrentResolution"))


def write_record(root: Path, record: dict) -> Path:
    path = progress_path(root)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def plot(root: Path, record: dict, path: Path | None = None) -> Path:
    """Convergence plot: resolution, class distribution and class changes per iteration;
    written beside the run (plot_path), or to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["iterations"]
    iterations = [r["iteration"] for r in rows]
    figure, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    figure.suptitle(
        f"{record['run']}: iteration {record['current_iteration']} of "
        f"{record['requested_iterations']}"
        + (f", resumed {record['resumes']}x" if record["resumes"] else "")
    )
    resolution = [r["resolution_angstrom"] for r in rows]
    top.plot(iterations, resolution, marker="o", color="tab:blue")
    top.invert_yaxis()
    top.set_ylabel("resolution (Å)\nbetter ↑")
    top.grid(alpha=0.3)

    classes = max((len(r["class_distribution"]) for r in rows), default=0)
    if rows and classes:
        shares = [
            [r["class_distribution"][k] if k < len(r["class_distribution"]) else 0 for r in rows]
            for k in range(classes)
        ]
        middle.stackplot(
            iterations, shares, labels=[f"class {k + 1}" for k in range(classes)], alpha=0.85
        )
        middle.legend(loc="upper left", fontsize="small", ncol=min(classes, 6), framealpha=0.8)
    middle.set_ylim(0, 1)
    middle.set_ylabel("class distribution")

    changed = [r["changed_class_fraction"] for r in rows]
    bottom.plot(iterations, changed, marker="s", color="tab:gray")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("changed class\n(fraction)")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    if iterations:
        bottom.set_xlim(
            min(iterations) - 0.5, max(record["requested_iterations"], max(iterations)) + 0.5
        )
        bottom.xaxis.get_major_locator().set_params(integer=True)

    for n, resumed in enumerate(record["resumed_from"]):
        for axis in (top, middle, bottom):
            axis.axvline(resumed + 0.5, color="tab:red", linestyle="--", linewidth=1.2)
        top.annotate(
            f"resumed after {resumed}",
            xy=(resumed + 0.5, 1 - 0.12 * (n % 3) - 0.06), xycoords=("data", "axes fraction"),
            color="tab:red", fontsize="small", ha="left",
            xytext=(3, 0), textcoords="offset points",
        )  # fmt: skip
    figure.tight_layout()
    path = path or plot_path(root)
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class ClassPanels:
    """The class picture: where it was written and, per class, the pixel boxes of its three
    slices in it (left, bottom, right, top from the image's bottom-left), for a reader to check."""

    path: Path
    iteration: int
    boxes: list[list[tuple[int, int, int, int]]]
    slices: list[list[np.ndarray]] = field(default_factory=list, repr=False)
    """Per class, its central slices as drawn (XY, or XY/XZ/YZ)."""


VIEWS = ("XY", "XZ", "YZ")
THUMBNAIL_PIXELS = 32
"""A class slice as the job reports it (relion_spot.intake.report: ``class_slices``), for
``relion-spot plot --classes`` to redraw the picture where the maps are out of reach."""
MAX_THUMBNAIL_CLASSES = 12
"""Reports carry the slices of at most this many classes (a report stays well under DynamoDB's
item limit)."""


def thumbnails(panels: ClassPanels) -> dict | None:
    """The drawn slices, each resampled to THUMBNAIL_PIXELS square and scaled to 0..255 over its
    own range, as base64 text: a few KB per class."""
    import base64

    import numpy as np

    if not panels.slices or len(panels.slices) > MAX_THUMBNAIL_CLASSES:
        return None
    encoded = []
    for planes in panels.slices:
        row = []
        for plane in planes:
            data = np.asarray(plane, dtype=np.float64)
            ys = np.linspace(0, data.shape[0] - 1, THUMBNAIL_PIXELS).round().astype(int)
            xs = np.linspace(0, data.shape[1] - 1, THUMBNAIL_PIXELS).round().astype(int)
            small = data[np.ix_(ys, xs)]
            low, high = float(small.min()), float(small.max())
            scaled = (small - low) / (high - low) if high > low else np.zeros_like(small)
            row.append(base64.b64encode((scaled * 255).round().astype(np.uint8).tobytes()).decode())
        encoded.append(row)
    return {
        "iteration": panels.iteration,
        "views": list(VIEWS[: len(panels.slices[0])]),
        "pixels": THUMBNAIL_PIXELS,
        "slices": encoded,
    }


def decode_thumbnails(class_slices: dict) -> list[list[np.ndarray]]:
    """``thumbnails``' text back as pixel planes (what ``draw_classes`` draws)."""
    import base64

    import numpy as np

    size = int(class_slices["pixels"])
    return [
        [np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(size, size) for text in row]
        for row in class_slices["slices"]
    ]


def _fraction(value: float | None, digits: int, unit: str) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def plot_classes(
    root: Path, record: dict, path: Path | None = None, *, all_views: bool = False
) -> ClassPanels | None:
    """Each class map of the newest iteration as its central slices, one row per class, titled
    with its share of the particles, its estimated resolution and its angular and offset
    accuracy: what a scientist picks classes by. None while a map is not readable yet.

    The maps live on the shared file system, where reads bill (EFS Elastic) and RELION's job
    shares the node. While the run goes (``all_views`` false) only the central XY plane is read,
    one contiguous plane of each map; the XZ and YZ slices touch every page of the volume, so
    they are drawn once, when the run ends (the watcher's final refresh)."""
    import mrcfile

    rows = record["iterations"]
    if not rows:
        return None
    row = rows[-1]
    stem = iteration_root(root, row["iteration"])
    slices = []
    for k in range(1, len(row["class_distribution"]) + 1):
        try:
            with mrcfile.mmap(f"{stem}_class{k:03d}.mrc", mode="r", permissive=True) as mrc:
                volume = mrc.data
                if volume is None or volume.ndim != 3:
                    return None
                z, y, x = (n // 2 for n in volume.shape)
                central = [volume[z].copy()]
                if all_views:
                    central += [volume[:, y, :].copy(), volume[:, :, x].copy()]
                slices.append(central)
        except (OSError, ValueError):  # being written, cut short, or not yet there
            return None
    return draw_classes(
        slices,
        row,
        title=f"{record['run']}: classes at iteration {row['iteration']}",
        path=path or classes_path(root),
    )


def draw_classes(
    slices: list[list[np.ndarray]], row: dict, *, title: str, path: Path
) -> ClassPanels:
    """The class picture of ``slices`` (per class: XY, or XY/XZ/YZ), each row titled from the
    iteration's ``row`` (class_distribution, class_resolution_angstrom, accuracies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = VIEWS[: len(slices[0])]
    all_views = len(views) > 1
    figure, axes = plt.subplots(
        len(slices),
        len(views),
        figsize=(6.6 if all_views else 3.6, 2.3 * len(slices) + 0.5),
        squeeze=False,
    )
    figure.suptitle(title)
    resolutions = row.get("class_resolution_angstrom") or []
    rotations = row.get("class_accuracy_rotation_deg") or []
    offsets = row.get("class_accuracy_translation_angstrom") or []
    for k, planes in enumerate(slices):
        share = row["class_distribution"][k]
        title = (
            f"class {k + 1}: {share:.1%} of particles, "
            f"{_fraction(resolutions[k] if k < len(resolutions) else None, 1, ' Å')}, "
            f"accuracy {_fraction(rotations[k] if k < len(rotations) else None, 1, '°')} / "
            f"{_fraction(offsets[k] if k < len(offsets) else None, 1, ' Å')}"
        )
        for axis, plane, name in zip(axes[k], planes, views, strict=True):
            axis.imshow(plane, cmap="gray", origin="lower")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.text(0.03, 0.96, name, transform=axis.transAxes, color="gold",
                      fontsize="x-small", va="top")  # fmt: skip
        axes[k][len(views) // 2].set_title(title, fontsize="small")
    figure.tight_layout()
    figure.canvas.draw()
    boxes = [
        [
            (round(b.x0), round(b.y0), round(b.x1), round(b.y1))
            for b in (axis.get_window_extent() for axis in axes_row)
        ]
        for axes_row in axes
    ]
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=figure.dpi)
    plt.close(figure)
    os.replace(temporary, path)
    return ClassPanels(path, int(row["iteration"]), boxes, slices)


def update(
    root: Path,
    requested_iterations: int | None = None,
    *,
    cache: IterationCache | None = None,
    final: bool = False,
    pictures: bool = True,
) -> dict:
    """Collect, write the JSON record and (with ``pictures``) redraw the pictures; returns the
    record. ``final``: the run has ended, so the classes get all three views (see plot_classes)
    and, on a ground-truthed set, the newest iteration is scored against the truth
    (truth_accuracy)."""
    record = collect(root, requested_iterations, cache=cache)
    if final and record["current_iteration"]:
        record["truth_accuracy"] = truth_accuracy(root, record["current_iteration"])
    write_record(root, record)
    if pictures or final:
        plot(root, record)
        panels = plot_classes(root, record, all_views=final)
        drawn = thumbnails(panels) if panels is not None else None
        if drawn is not None:
            record["class_slices"] = drawn
            write_record(root, record)
    return record


MAX_TRUE_CLASSES = 50
"""The generator's largest K: a truth with more classes is not one (and the matching would be
slow)."""


def truth_accuracy(root: Path, iteration: int) -> float | None:
    """On a ground-truthed set (the project holds a synthetic set's manifest:
    relion_spot.relion.synthetic), the fraction of the run's particles in their true class at
    ``iteration``, label swaps forgiven; None on a lab's own data or when it cannot be scored."""
    from relion_spot.relion import score, synthetic

    parents = root.resolve().parents  # <project>/<job type>/jobNNN/<root name>
    if len(parents) < 3:
        return None
    project = parents[2]
    manifest = synthetic.read_manifest(project)
    files = manifest.get("files") if manifest else None
    named = files.get("truth") if isinstance(files, dict) else None
    if not isinstance(named, str):
        return None
    truth_path = (project / named).resolve()
    if not truth_path.is_relative_to(project) or not truth_path.is_file():
        return None  # the truth is the project's own file or there is none
    try:
        truth = score.read_truth(truth_path)
        if truth.nunique() > MAX_TRUE_CLASSES:
            return None
        scored = score.score_data_star(Path(f"{iteration_root(root, iteration)}_data.star"), truth)
    except Exception:  # scoring is a report: whatever a planted file does, the job goes on
        return None
    return round(scored.accuracy, 4)


REPORT_EVERY_SECONDS = 60.0
"""Between new iterations, the intake table's copy (and its log tail) is refreshed this often."""
PICTURES_EVERY_SECONDS = 120.0
"""While the run goes, its pictures are redrawn at most this often (always at its end): drawing
them costs about 0.6 CPU seconds, which the job's RELION shares the node with. A benchmark
iteration takes minutes, so each gets its pictures; short test iterations skip some."""


def job_state(record: dict, *, final: bool) -> str:
    from relion_spot.intake.report import FINISHED, RUNNING, STOPPED

    if record.get("finished"):
        return FINISHED
    return STOPPED if final else RUNNING


class Watcher:
    """Updates the progress of a run every few seconds while it runs, then once more at stop.

    In a job the intake submitted (its submission id is in the environment), each update is
    also reported into the submission's intake table item (relion_spot.intake.report)."""

    def __init__(
        self,
        *,
        root: Path,
        requested_iterations: int | None,
        interval: float,
        reporter: ProgressReporter | None = None,
    ) -> None:
        from relion_spot.intake.report import ProgressReporter

        self.root = root
        self.requested = requested_iterations
        self.interval = interval
        self.reporter = reporter if reporter is not None else ProgressReporter.from_env(os.environ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._seen: tuple[int, ...] = ()
        self._cache: IterationCache = {}
        self._record: dict | None = None
        self._reported_at = 0.0
        self._drawn_at: float | None = None
        self._pictures_pending = False
        self._class_slices: dict | None = None

    def _pictures_due(self, now: float) -> bool:
        return self._drawn_at is None or now - self._drawn_at >= PICTURES_EVERY_SECONDS

    def _changed(self) -> bool:
        seen = tuple(written_iterations(self.root))
        changed = seen != self._seen
        self._seen = seen
        return changed

    def _report(self, record: dict, *, final: bool) -> None:
        # The newest class slices drawn go with every report until the next drawing.
        if "class_slices" in record:
            self._class_slices = record["class_slices"]
        elif self._class_slices is not None:
            record = {**record, "class_slices": self._class_slices}
        self._record = record
        if self.reporter is not None:
            self.reporter.publish(record, state=job_state(record, final=final))
            self._reported_at = time.monotonic()

    def refresh(self, *, final: bool = False) -> dict:
        self._changed()
        record = update(self.root, self.requested, cache=self._cache, final=final)
        self._report(record, final=final)
        return record

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._changed():
                now = time.monotonic()
                if self._pictures_pending and self._pictures_due(now):
                    # An iteration skipped the drawing and no new one came: draw it now.
                    try:
                        drawn = update(self.root, self.requested, cache=self._cache, pictures=True)
                        self._drawn_at, self._pictures_pending = now, False
                        self._report(drawn, final=False)
                    except Exception as error:  # progress never takes the job down
                        print(f"progress: could not draw {self.root}: {error}", file=sys.stderr)
                due = now - self._reported_at >= REPORT_EVERY_SECONDS
                if self._record is not None and due:
                    self._report(self._record, final=False)  # a fresher log tail
                continue
            now = time.monotonic()
            pictures = self._pictures_due(now)
            try:
                record = update(self.root, self.requested, cache=self._cache, pictures=pictures)
                if pictures and record["iterations"]:
                    self._drawn_at = now
                self._pictures_pending = not pictures and bool(record["iterations"])
            except Exception as error:  # progress must never take the job down with it
                print(f"progress: could not update {self.root}: {error}", file=sys.stderr)
                continue
            self._report(record, final=False)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh(final=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.progress",
        description="Write the progress record (JSON) and convergence plot (PNG) of a run.",
    )
    parser.add_argument(
        "--run-root",
        type=Path,
        required=True,
        help="output root given to relion_refine --o (e.g. Class3D/run)",
    )
    parser.add_argument(
        "--iter",
        type=int,
        default=None,
        help="requested iterations (default: from the run's optimiser file)",
    )
    args = parser.parse_args(argv)
    if not args.run_root.parent.is_dir():
        print(f"progress: {args.run_root.parent} does not exist", file=sys.stderr)
        return 2
    record = update(args.run_root, args.iter, final=True)  # asked for once: every view
    if not record["iterations"]:
        print(f"progress: no readable iteration of {args.run_root} yet", file=sys.stderr)
        return 1
    last = record["iterations"][-1]
    eta = record["eta_seconds"]
    print(
        f"iteration {record['current_iteration']}/{record['requested_iterations']}, "
        f"resolution {last['resolution_angstrom']} Å, classes "
        + " ".join(f"{d:.2f}" for d in last["class_distribution"])
        + (f", ETA {eta:.0f} s" if eta is not None else "")
    )
    print(f"  {progress_path(args.run_root)}\n  {plot_path(args.run_root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
