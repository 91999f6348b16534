"""Real RELION (Debian's 3.1.3 CPU build) on a generated ground-truthed data set.

Needs the apt packages relion, openmpi-bin and libtcmalloc-minimal4 (scripts/setup-relion.sh);
without them these tests skip and say so. The data set and the two classification runs (one
uninterrupted, one killed twice and resumed) are made once per session and shared.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relion_spot.relion.checkpoint import CheckpointError, check_iteration
from relion_spot.relion.synthetic import SyntheticResult, SyntheticSpec, generate

RELION_PROGRAMS = ("relion_refine", "relion_project", "relion_preprocess", "relion_reconstruct",
                   "relion_image_handler")  # fmt: skip
SPEC = SyntheticSpec(classes=2, particles_per_class=100, snr=1.0, seed=0)
ITERATIONS = 10
FIRST_KILL_AFTER = 3
SECOND_KILL_AFTER = 6
RUN_TIMEOUT_S = 900


def require_relion() -> None:
    missing = [p for p in RELION_PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(
            f"needs RELION ({', '.join(missing)} not on PATH): apt packages relion, "
            "openmpi-bin, libtcmalloc-minimal4 — run scripts/setup-relion.sh"
        )


def classify_argv(root: str, *, iterations: int = ITERATIONS) -> list[str]:
    """The benchmark's flags, scaled to the small box: healpix 2, offsets 2 px in 1 px steps."""
    ini_high = round(2.5 * 2 * SPEC.angpix)
    return [
        "relion_refine", "--i", "particles.star", "--ref", "reference.mrc", "--firstiter_cc",
        "--ini_high", str(ini_high), "--ctf", "--ctf_corrected_ref", "--iter", str(iterations),
        "--tau2_fudge", "4", "--particle_diameter", f"{SPEC.particle_diameter_angstrom:g}",
        "--K", str(SPEC.classes), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
        "--healpix_order", "2", "--offset_range", "2", "--offset_step", "1", "--sym", "C1",
        "--norm", "--scale", "--random_seed", "0", "--pool", "10", "--j", "2", "--o", root,
    ]  # fmt: skip


def checkpoint_cli(mode: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "relion_spot.relion.checkpoint", mode, "--", *argv]


@dataclass
class RunRecord:
    root: Path
    wall_seconds: float = 0.0
    logs: list[str] = field(default_factory=list)
    kills: list[int] = field(default_factory=list)
    """Iterations after which the job was killed."""


@dataclass
class Attempt:
    """One start of the job; its output goes to a file (a pipe could fill and stall RELION)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        self.process.wait(timeout=60)
        return self.log.read_text()


def _start(argv: list[str], cwd: Path, log: Path) -> Attempt:
    with log.open("wb") as handle:
        # Own session, so a kill takes the wrapper and RELION together, like a reclaimed node.
        process = subprocess.Popen(
            checkpoint_cli("run", argv), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Attempt(process, log)


def _kill_when_complete(attempt: Attempt, root: Path, iteration: int, classes: int) -> int:
    """SIGKILL the run's session once ``iteration`` is complete; the newest complete iteration
    at the kill (on a loaded machine RELION may have finished one more before the poll saw it)."""
    process = attempt.process
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before iteration {iteration}:\n{attempt.output()}")
        try:
            check_iteration(root, iteration, classes)
        except CheckpointError:
            time.sleep(0.1)
            continue
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        newest = iteration
        while True:
            try:
                check_iteration(root, newest + 1, classes)
            except CheckpointError:
                return newest
            newest += 1
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"iteration {iteration} not complete after {RUN_TIMEOUT_S} s")


def run_to_end(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(
        checkpoint_cli("run", argv), cwd=cwd, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    return log


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticResult:
    require_relion()
    return generate(SPEC, tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def uninterrupted(dataset: SyntheticResult) -> RunRecord:
    record = RunRecord(root=dataset.out / "Uninterrupted" / "run")
    record.root.parent.mkdir()
    started = time.monotonic()
    record.logs.append(run_to_end(classify_argv("Uninterrupted/run"), dataset.out))
    record.wall_seconds = time.monotonic() - started
    return record


@pytest.fixture(scope="session")
def resumed(dataset: SyntheticResult, uninterrupted: RunRecord) -> RunRecord:
    """Killed after iteration 3 and resumed; killed after 6 with 6's map cut short; resumed
    (``kills`` holds the iterations actually complete at each kill)."""
    record = RunRecord(root=dataset.out / "Resumed" / "run")
    record.root.parent.mkdir()
    argv = classify_argv("Resumed/run")
    started = time.monotonic()

    first = _start(argv, dataset.out, record.root.parent / "attempt1.log")
    killed = _kill_when_complete(first, record.root, FIRST_KILL_AFTER, SPEC.classes)
    record.logs.append(first.output())
    record.kills.append(killed)

    second = _start(argv, dataset.out, record.root.parent / "attempt2.log")
    killed = _kill_when_complete(second, record.root, SECOND_KILL_AFTER, SPEC.classes)
    record.logs.append(second.output())
    record.kills.append(killed)
    truncate(Path(f"{record.root}_it{killed:03d}_class002.mrc"))

    record.logs.append(run_to_end(argv, dataset.out))
    record.wall_seconds = time.monotonic() - started
    return record


def truncate(path: Path, keep: float = 0.6) -> None:
    """What a reclaim in the middle of RELION's write leaves behind."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(int(size * keep))


@pytest.fixture
def copy_run(tmp_path: Path) -> Callable[[RunRecord], Path]:
    """A private copy of a finished run's folder, to damage without touching the shared one."""

    def copy(record: RunRecord) -> Path:
        target = tmp_path / record.root.parent.name
        shutil.copytree(record.root.parent, target)
        return target / record.root.name

    return copy
