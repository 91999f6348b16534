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
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from relion_spot.relion.checkpoint import iteration_root, read_history, written_iterations

if TYPE_CHECKING:
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


def progress_path(root: Path) -> Path:
    return root.parent / f"{root.name}_progress.json"


def plot_path(root: Path) -> Path:
    return root.parent / f"{root.name}_convergence.png"


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


def read_iteration(root: Path, iteration: int) -> tuple[IterationProgress, int] | None:
    """One iteration's figures and its requested total, or None while its files are unreadable."""
    import starfile

    stem = iteration_root(root, iteration)
    try:
        model = starfile.read(f"{stem}_model.star", always_dict=True)
        optimiser = _general(
            starfile.read(f"{stem}_optimiser.star", always_dict=True), "optimiser_general"
        )
        general = _general(model, "model_general")
        distribution = [round(float(v), 6) for v in model["model_classes"]["rlnClassDistribution"]]
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
    )
    return progress, int(optimiser.get("rlnNumberOfIterations", 0))


Stamp = tuple[int, int, int, int]
"""Modification time (ns) and size of an iteration's model and optimiser STARs."""
IterationCache = dict[int, tuple[Stamp, IterationProgress, int]]
"""Figures already read, by iteration, with the stamp of the files they were read from."""


def _stamp(root: Path, iteration: int) -> Stamp | None:
    stem = iteration_root(root, iteration)
    try:
        model = os.stat(f"{stem}_model.star")
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
        return _mtime(Path(f"{iteration_root(root, 0)}_model.star"))
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
    return {
        "run": root.name,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "requested_iterations": requested,
        "current_iteration": current,
        "finished": bool(rows) and current >= requested > 0,
        "resolution_angstrom": rows[-1].resolution_angstrom if rows else None,
        "seconds_per_iteration": per_iteration,
        "eta_seconds": 0.0 if remaining == 0 and rows else eta,
        "resumes": history.get("resumes", 0),
        "resumed_from": resumed_from,
        "iterations": [asdict(r) for r in rows],
    }


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


def update(
    root: Path, requested_iterations: int | None = None, *, cache: IterationCache | None = None
) -> dict:
    """Collect, write the JSON record and redraw the plot; returns the record."""
    record = collect(root, requested_iterations, cache=cache)
    write_record(root, record)
    plot(root, record)
    return record


REPORT_EVERY_SECONDS = 60.0
"""Between new iterations, the intake table's copy (and its log tail) is refreshed this often."""


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

    def _changed(self) -> bool:
        seen = tuple(written_iterations(self.root))
        changed = seen != self._seen
        self._seen = seen
        return changed

    def _report(self, record: dict, *, final: bool) -> None:
        self._record = record
        if self.reporter is not None:
            self.reporter.publish(record, state=job_state(record, final=final))
            self._reported_at = time.monotonic()

    def refresh(self, *, final: bool = False) -> dict:
        self._changed()
        record = update(self.root, self.requested, cache=self._cache)
        self._report(record, final=final)
        return record

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._changed():
                due = time.monotonic() - self._reported_at >= REPORT_EVERY_SECONDS
                if self._record is not None and due:
                    self._report(self._record, final=False)  # a fresher log tail
                continue
            try:
                record = update(self.root, self.requested, cache=self._cache)
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
    record = update(args.run_root, args.iter)
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
