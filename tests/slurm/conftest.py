"""Container fixtures: the Slurm images built by the project's own script, and a local cluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from relion_spot.slurm.local import docker_available

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_DOCKER = REPO_ROOT / "scripts" / "setup-docker.sh"


@pytest.fixture(scope="session")
def slurm_images() -> None:
    """Engine up and images current (a no-op rebuild when nothing changed).

    Skips only where Docker is absent altogether; an engine that is installed but not running is
    started by the script, and a failing script fails the tests.
    """
    if docker_available() is not None and shutil.which("dockerd") is None:
        pytest.skip("Docker is absent (no engine, no dockerd); run scripts/setup-docker.sh")
    result = subprocess.run(
        ["bash", str(SETUP_DOCKER)], capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/setup-docker.sh failed:\n{result.stderr[-3000:]}")
