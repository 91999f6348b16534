"""Every program the Slurm image runs imports with only what the image carries.

The image installs assets/slurm/image-requirements.txt, a subset of requirements.txt: the CDK,
cdk-nag and the CLI's presentation (rich) stay on the lab's machine. A power-save program that
reaches one of them through an import chain dies in the image at its first line, and slurmctld
then marks every node it should have launched down. The programs are found where the image
starts them (``-m relion_spot....`` in assets and the entrypoint), each imported in a fresh
interpreter where the packages the image lacks cannot be imported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTERS = [
    *sorted((REPO / "assets" / "slurm").rglob("*")),
    REPO / "relion_spot" / "slurm" / "entrypoint.py",
]
PROGRAM = re.compile(r"""(?:-m\s+|_start_beside\(\s*")(relion_spot(?:\.\w+)+)""")


def _names(path: Path) -> set[str]:
    """Top-level import names of the requirement lines in ``path`` (comments skipped)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower().replace("-", "_"))
    return names


IMPORT_NAMES = {"aws_cdk_lib": "aws_cdk", "cdk_nag": "cdk_nag", "constructs": "constructs"}
MISSING = sorted(
    IMPORT_NAMES.get(name, name)
    for name in _names(REPO / "requirements.txt")
    - _names(REPO / "assets/slurm/image-requirements.txt")
)


def _programs() -> list[str]:
    found = set()
    for path in STARTERS:
        if path.is_file():
            found.update(PROGRAM.findall(path.read_text(errors="replace")))
    return sorted(found)


BLOCKER = """
import sys
from importlib.abc import MetaPathFinder
class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the image)")
        return None
sys.meta_path.insert(0, Missing())
import importlib
importlib.import_module({program!r})
"""


def test_the_image_lacks_what_the_lab_s_machine_alone_needs() -> None:
    assert {"aws_cdk", "rich"} <= set(MISSING), MISSING
    assert len(_programs()) >= 8, _programs()


@pytest.mark.parametrize("program", _programs())
def test_each_program_the_image_runs_imports_with_what_the_image_carries(program: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER.format(missing=set(MISSING), program=program)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
