"""Running RELION programs: one place that finds them, speeds them up and reports their failures."""

from __future__ import annotations

import ctypes.util
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

TCMALLOC_SONAME = "libtcmalloc_minimal.so.4"
"""RELION spends about half its CPU wall time in glibc malloc churn; tcmalloc halves it."""


class RelionToolError(RuntimeError):
    """A RELION program is missing or exited non-zero; the message says which and why."""


def tcmalloc_preload() -> str | None:
    """The tcmalloc library to preload, or None when this host does not have it."""
    if ctypes.util.find_library("tcmalloc_minimal") is None:
        return None
    return TCMALLOC_SONAME


def relion_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for RELION programs: tcmalloc preloaded when available, one OpenMP thread."""
    env = dict(os.environ if base is None else base)
    preload = tcmalloc_preload()
    if preload is not None:
        current = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
        if preload not in current:
            env["LD_PRELOAD"] = ":".join([preload, *current])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


RELION_EXEC_ENV = "RELION_SPOT_RELION_EXEC"
"""Words that run a RELION program from an image, e.g. ``apptainer exec --bind /data X.sif``
(the launch line of the cluster's jobs); unset, RELION programs are looked up on PATH."""


def launcher(env: Mapping[str, str] | None = None) -> list[str]:
    """The words before a RELION program's name (empty: run it from PATH)."""
    return shlex.split((os.environ if env is None else env).get(RELION_EXEC_ENV, ""))


def require(program: str) -> str:
    """Absolute path of a RELION program, or a clear error naming it."""
    if launcher():
        return program
    found = shutil.which(program)
    if found is None:
        raise RelionToolError(
            f"{program} is not on PATH: install RELION 5, or set {RELION_EXEC_ENV} to the words "
            "that run it from an image (e.g. 'apptainer exec --bind /data relion.sif')"
        )
    return found


def run_tool(
    args: Sequence[str | float | os.PathLike[str]],
    *,
    cwd: Path,
    log: Path | None = None,
    tolerated: Sequence[str] = (),
) -> str:
    """Run one RELION program to completion in cwd; returns its stdout, raises with its tail.
    ``tolerated``: stderr lines holding any of these texts do not count as errors."""
    argv = [str(a) for a in args]
    argv = [*launcher(), require(argv[0]), *argv[1:]]
    done = subprocess.run(
        argv, cwd=cwd, env=relion_env(), capture_output=True, text=True, check=False
    )
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    # RELION 3.1 prints errors to stderr but sometimes still exits 0; trust both signals.
    errors = [line for line in done.stderr.splitlines() if not any(t in line for t in tolerated)]
    failed = done.returncode != 0 or any("ERROR" in line for line in errors)
    if failed:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RelionToolError(
            f"{Path(argv[0]).name} failed (exit {done.returncode}) in {cwd}:\n{tail}"
        )
    return done.stdout
