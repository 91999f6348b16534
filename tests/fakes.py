"""Stand-ins shared by tests: only for time, never for the project's own code."""

from __future__ import annotations


class FakeClock:
    """Time that advances only when the code under test sleeps, so waits cost no wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
