"""Progress: a rich bar (bytes, rate, ETA) on a terminal, plain log lines in a batch job."""

from __future__ import annotations

import sys
import time
from typing import Protocol


def log(message: str) -> None:
    print(f"staging: {message}", file=sys.stderr, flush=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


class Reporter(Protocol):
    def start(self, what: str, total: int | None, done: int = 0) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class LogReporter:
    """One line per tenth of the work or per ``interval`` seconds, whichever comes first."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self.what = ""
        self.total: int | None = None
        self.done = 0
        self._started_at = 0.0
        self._started_done = 0
        self._last_at = 0.0
        self._last_tenth = 0
        self._printed = 0

    def start(self, what: str, total: int | None, done: int = 0) -> None:
        self.what, self.total, self.done = what, total, done
        self._started_at = self._last_at = time.monotonic()
        self._started_done = done
        self._last_tenth = self._tenth()
        self._printed = done
        if done:
            log(f"{what}: continuing at {human_bytes(done)} of {self._total_text()}")
        else:
            log(f"{what}: {self._total_text()}")

    def _tenth(self) -> int:
        return self.done * 10 // self.total if self.total else 0

    def _total_text(self) -> str:
        return human_bytes(self.total) if self.total is not None else "size unknown"

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        tenth = self._tenth()
        if tenth > self._last_tenth or now - self._last_at >= self.interval:
            self._last_tenth, self._last_at = tenth, now
            self._line(now)

    def _line(self, now: float) -> None:
        self._printed = self.done
        elapsed = max(now - self._started_at, 1e-6)
        rate = (self.done - self._started_done) / elapsed
        text = f"{self.what}: {human_bytes(self.done)} of {self._total_text()}"
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            eta = int((self.total - self.done) / rate)
            text += f", ETA {eta // 3600}h{eta % 3600 // 60:02d}m{eta % 60:02d}s"
        log(text)

    def finish(self) -> None:
        if self._printed != self.done:
            self._line(time.monotonic())


class RichReporter:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task: TaskID | None = None

    def start(self, what: str, total: int | None, done: int = 0) -> None:
        self._progress.start()
        self._task = self._progress.add_task(what, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        self._progress.stop()


def make_reporter() -> Reporter:
    return RichReporter() if sys.stderr.isatty() else LogReporter()
