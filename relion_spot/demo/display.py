"""What the demo shows while it runs (a rich progress bar per phase) and the summary at the end."""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .runner import DemoResult

PHASES = {
    "setup": "Docker engine and images",
    "data": "ground-truthed particles (relion_project)",
    "cloud": "embedded cloud: moto, controller, reconciler",
    "submitted": "submitted through the intake queue",
    "accepted": "accepted by Slurm",
    "pricing": "pricing the job's attempts",
    "stage": "relion-spot stage: the lab's folder through the exchange bucket",
    "pull": "relion-spot pull: the results through the exchange bucket",
}


class Display:
    def __init__(self, iterations: int, *, stream: TextIO) -> None:
        self.console = Console(file=stream)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.iterations = iterations
        self._phase: Any = None
        self._job: Any = None
        self._last_note = ""

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_phase()
        self.progress.stop()

    def _finish_phase(self) -> None:
        if self._phase is not None:
            self.progress.update(self._phase, completed=1)
            self._phase = None

    def report(self, event: str, details: dict[str, Any]) -> None:
        if event in PHASES:
            self._finish_phase()
            label = PHASES[event]
            if event == "accepted":
                label = f"job {details['job_id']} {label}"
            self._phase = self.progress.add_task(label, total=1)
            return
        if event == "running":
            self._finish_phase()
            if self._job is None:
                self._job = self.progress.add_task("Class3D", total=self.iterations)
            resolution = details.get("resolution")
            note = f"Class3D on {details.get('node') or '-'} [{details['state']}]"
            if resolution:
                note += f" {resolution:.1f} Å"
            self.progress.update(self._job, completed=details["iteration"], description=note)
            return
        if event == "reclaim":
            self.progress.console.print(
                f"[yellow]spot reclaim[/]: {details['node']} taken back after iteration "
                f"{details['after_iteration']}; the job goes back to the queue"
            )

    def summary(self, result: DemoResult) -> None:
        table = Table(
            title=f"relion-spot demo: job {result.job_id} {result.state}", show_header=False
        )
        table.add_column(no_wrap=True)
        table.add_column()
        resolutions = ", ".join(
            f"{r:.1f}" if r is not None else "-" for r in result.resolution_per_iteration
        )
        lost = _figure(result.reclaimed_usd, "${:.4f}") + _figure(
            result.reclaimed_share, " ({:.0%})"
        )
        rows = [
            ("RELION", f"{result.relion_version or '-'} via {result.launcher or '-'}"),
            ("iterations", str(result.iterations)),
            ("resolution per iteration (Å)", resolutions),
            ("accuracy against the truth", _figure(result.accuracy, "{:.1%}")),
            ("resumed after iteration", ", ".join(map(str, result.resumed_from)) or "-"),
            ("spot reclaims", str(result.reclaims)),
            ("GPU nodes launched", str(result.nodes_launched)),
            ("CPU nodes launched (image check)", str(result.cpu_nodes_launched)),
            ("cost (at most: on-demand ceiling)", _figure(result.cost_usd, "${:.4f}")),
            ("  of it lost to the reclaim", lost),
            ("wall time", f"{result.wall_seconds:.0f} s"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        self.console.print(table)
        self.console.print(f"convergence plot: {result.plot or '-'}", soft_wrap=True)
        self.console.print(f"classes: {result.classes_plot or '-'}", soft_wrap=True)


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
