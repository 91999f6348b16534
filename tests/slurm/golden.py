"""Golden files: compare rendered text with a committed copy, or rewrite the copy on request.

Set RELION_SPOT_UPDATE_GOLDEN=1 to rewrite the files under tests/slurm/golden/ from the current
output (then review the diff). Without it a difference fails the test and shows the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_ENV = "RELION_SPOT_UPDATE_GOLDEN"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"no golden file {path}; run with {UPDATE_ENV}=1 to create it"
    expected = path.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"golden/{name}",
                tofile="rendered",
            )
        )
        raise AssertionError(f"{name} differs from its golden file:\n{diff}")
