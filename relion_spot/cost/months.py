"""Calendar months as the cost records count them (UTC), shared by the cost report and the
budget cap; no presentation here, so the controller's programs can import it."""

from __future__ import annotations

from datetime import UTC, datetime


def month_bounds(month: str) -> tuple[int, int]:
    """First and last epoch second of ``YYYY-MM`` (UTC)."""
    year, number = (int(p) for p in month.split("-"))
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp()) - 1
