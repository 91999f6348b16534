"""Container fixtures: the Slurm images built by the project's own script, and a local cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relion_spot.local.embedded import moto_server, wait_for_controller
from relion_spot.settings import Settings
from relion_spot.slurm.local import LocalSlurm, docker_available, write_key
from relion_spot.slurm.spec import LOCAL_CLOUD, ClusterSpec, spec_from_settings

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


@pytest.fixture
def moto_on_network(slurm_images: None) -> Iterator[tuple[LocalSlurm, str]]:
    """A cluster network plus moto's server on this host's address on that network only."""
    local = LocalSlurm(
        prefix=f"relion-spot-test-{os.getpid()}-moto",
        spec=spec_from_settings(Settings(gpus=(1,)), 1, **LOCAL_CLOUD),
        key_file=None,
        state_dir=Path(tempfile.mkdtemp(prefix="relion-spot-state-")),
    )
    local.remove()
    try:
        with moto_server(local.gateway_address(), interface=local.bridge_interface()) as endpoint:
            yield local, endpoint
    finally:
        local.remove()
        shutil.rmtree(local.state_dir, ignore_errors=True)


@contextmanager
def controller_only(work: Path, name: str, spec: ClusterSpec) -> Iterator[LocalSlurm]:
    """A real slurmctld of ``spec`` in its own container and network, answering; removed after.
    (Requires the images: use it from a fixture that depends on ``slurm_images``.)"""
    local = LocalSlurm(
        prefix=f"relion-spot-test-{os.getpid()}-{name}",
        spec=spec,
        key_file=write_key(work / "slurm.key"),
        state_dir=work / "state",
    )
    local.remove()
    try:
        local.start_controller()
        wait_for_controller(local)
        yield local
    finally:
        local.remove()
