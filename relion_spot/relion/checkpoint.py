"""Where a RELION classification or 3D auto-refine can resume from after its node was taken away.

RELION writes each iteration as several files (data, model, optimiser and sampling STARs plus one
map per class), from several ranks, none atomically. A reclaim can land in the middle, so an
iteration counts as a checkpoint only when every one of its files is present and complete: each
STAR parses fully with the blocks and rows RELION always writes, each map's size matches its
header, and the optimiser names this iteration. The newest such iteration wins; an incomplete
newer one is reported and passed over.

RELION 3.1 does not store some flags in its optimiser file (the GPU, thread, pool and scratch
options); a continuation must give them again, so they are carried over from the fresh command.

Continuing into the same --o rewrites the checkpoint iteration's data, optimiser, model and map
files while RELION initialises. A reclaim at that moment would truncate the only checkpoint, so
before continuing the checkpoint's files are copied into a snapshot folder beside the run; a
later start that finds the checkpoint iteration damaged restores it from the snapshot first.

A 3D auto-refine (``--auto_refine --split_random_halves``) writes each iteration's model and
maps per half (``_half1_model.star``, ``_half2_class001.mrc``): both halves count. It stops when
RELION decides it has converged, so it has no requested iteration count: it has finished when
its final files (``run_model.star``, ``run_class001.mrc``, the two unfiltered half maps) are
complete, and a continuation names no ``--iter``.

pandas, starfile and mrcfile are imported when an iteration is first checked, not before: a fresh
start (nothing to check) launches RELION without waiting half a second for them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

STAR_KINDS = ("data", "model", "optimiser", "sampling")

UNSTORED_VALUE_FLAGS = (
    "--j",
    "--pool",
    "--scratch_dir",
    "--keep_free_scratch",
    "--pipeline_control",
)
"""Flags with a value that RELION does not keep in _optimiser.star: repeat them on --continue."""
UNSTORED_SWITCHES = (
    "--skip_align",
    "--skip_rotate",
    "--bimodal_psi",
    "--dont_combine_weights_via_disc",
    "--reuse_scratch",
    "--preread_images",
    "--no_parallel_disc_io",
    "--cpu",
)
"""Flags without a value that RELION does not keep either (RELION 5's parseContinue turns
--skip_align, --skip_rotate and --bimodal_psi off unless they are given again)."""
GPU_FLAG = "--gpu"
"""Takes an optional device list ("--gpu" or "--gpu 0:1"), so it is parsed on its own."""

_MRC_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}


class CheckpointError(ValueError):
    """The command or the run cannot be resumed; the message names what is wrong."""


def iteration_root(root: Path, iteration: int) -> str:
    return f"{root}_it{iteration:03d}"


HALVES = ("half1", "half2")
"""An auto-refine's two independent halves: each iteration writes a model and maps per half."""


def iteration_files(
    root: Path, iteration: int, classes: int, *, halves: bool = False
) -> dict[str, Path]:
    """Every file RELION writes for one iteration, by kind (``halves``: of an auto-refine)."""
    stem = iteration_root(root, iteration)
    files = {kind: Path(f"{stem}_{kind}.star") for kind in STAR_KINDS}
    if not halves:
        for k in range(1, classes + 1):
            files[f"class{k:03d}"] = Path(f"{stem}_class{k:03d}.mrc")
        return files
    del files["model"]
    for half in HALVES:
        files[f"{half}_model"] = Path(f"{stem}_{half}_model.star")
        for k in range(1, classes + 1):
            files[f"{half}_class{k:03d}"] = Path(f"{stem}_{half}_class{k:03d}.mrc")
    return files


def final_files(root: Path) -> dict[str, Path]:
    """What an auto-refine writes once it has converged: the final model, particles and map
    from both halves, and each half's unfiltered map (what PostProcess reads)."""
    files = {kind: Path(f"{root}_{kind}.star") for kind in ("data", "model", "optimiser")}
    files["class001"] = Path(f"{root}_class001.mrc")
    for half in HALVES:
        files[f"{half}_unfil"] = Path(f"{root}_{half}_class001_unfil.mrc")
    return files


def check_final(root: Path) -> None:
    """Raise CheckpointError unless an auto-refine's final files are all there and whole."""
    files = final_files(root)
    for path in files.values():
        if not path.is_file():
            raise CheckpointError(f"{path.name} is missing")
    try:
        model_path = files["model"]
        general = _single(_read_star(model_path), "model_general", model_path)
        box = int(general.get("rlnOriginalImageSize", 0))
        data_path = files["data"]
        _table(_read_star(data_path), "particles", data_path)
        _single(_read_star(files["optimiser"]), "optimiser_general", files["optimiser"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{root.name}: a final figure does not read ({error})") from None
    for kind in ("class001", "half1_unfil", "half2_unfil"):
        _check_map(files[kind], box)


def has_finished(root: Path) -> bool:
    """An auto-refine at root has converged and written its final files."""
    try:
        check_final(root)
    except CheckpointError:
        return False
    return True


def written_iterations(root: Path) -> list[int]:
    """Iterations with at least one file written, newest first."""
    pattern = re.compile(
        re.escape(root.name) + r"_it(\d{3,})_(data|model|optimiser|sampling|half[12]_model)\.star$"
        "|" + re.escape(root.name) + r"_it(\d{3,})_(?:half[12]_)?class\d{3,}\.mrc$"
    )
    found = set()
    if root.parent.is_dir():
        for path in root.parent.iterdir():
            match = pattern.match(path.name)
            if match:
                found.add(int(match.group(1) or match.group(3)))
    return sorted(found, reverse=True)


def _read_star(path: Path) -> dict[str, pd.DataFrame | dict]:
    import starfile

    text = path.read_bytes()
    if not text.endswith(b"\n"):
        raise CheckpointError(f"{path.name} ends mid-line (truncated)")
    try:
        return starfile.read(path, always_dict=True)
    except Exception as error:
        raise CheckpointError(f"{path.name} does not parse: {error}") from error


def _table(blocks: dict, name: str, path: Path) -> pd.DataFrame:
    import pandas as pd

    block = blocks.get(name)
    if not isinstance(block, pd.DataFrame) or block.empty:
        raise CheckpointError(f"{path.name} lacks the {name} table")
    if block.isna().any().any():
        raise CheckpointError(f"{path.name}: the {name} table has empty cells (truncated)")
    return block


def _single(blocks: dict, name: str, path: Path) -> dict:
    import pandas as pd

    block = blocks.get(name)
    if isinstance(block, pd.DataFrame) and len(block) == 1:
        block = block.iloc[0].to_dict()
    if not isinstance(block, dict) or not block:
        raise CheckpointError(f"{path.name} lacks the {name} block")
    return block


def _check_map(path: Path, box: int) -> None:
    import mrcfile

    try:
        with mrcfile.open(path, header_only=True, permissive=False) as mrc:
            header = mrc.header
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            mode, extended = int(header.mode), int(header.nsymbt)
    except Exception as error:
        raise CheckpointError(f"{path.name} is not a readable MRC map: {error}") from error
    if mode not in _MRC_MODE_BYTES:
        raise CheckpointError(f"{path.name} has an unknown MRC mode {mode}")
    expected = 1024 + extended + nx * ny * nz * _MRC_MODE_BYTES[mode]
    actual = path.stat().st_size
    if actual != expected:
        raise CheckpointError(f"{path.name} is {actual} bytes, its header says {expected}")
    if (nx, ny, nz) != (box, box, box):
        raise CheckpointError(f"{path.name} is {nx}x{ny}x{nz}, the model's box is {box}")


def check_iteration(root: Path, iteration: int, classes: int, *, halves: bool = False) -> None:
    """Raise CheckpointError unless every file of the iteration is complete and consistent; a
    file whose figures do not read (a label missing, text where a number belongs) is incomplete
    too, never an exception of another kind (the drainer checks runs a member names)."""
    try:
        _check_iteration(root, iteration, classes, halves=halves)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{Path(iteration_root(root, iteration)).name}: a figure does not read "
            f"({type(error).__name__}: {error})"
        ) from None


def _check_iteration(root: Path, iteration: int, classes: int, *, halves: bool) -> None:
    """Raise CheckpointError naming the first file of the iteration that is missing or broken."""
    files = iteration_files(root, iteration, classes, halves=halves)
    for path in files.values():
        if not path.is_file():
            raise CheckpointError(f"{path.name} is missing")

    optimiser_path = files["optimiser"]
    optimiser = _single(_read_star(optimiser_path), "optimiser_general", optimiser_path)
    if int(optimiser.get("rlnCurrentIteration", -1)) != iteration:
        raise CheckpointError(
            f"{optimiser_path.name} says iteration {optimiser.get('rlnCurrentIteration')}"
        )
    models = ("half1_model", "half2_model") if halves else ("model",)
    labelled = (
        *zip(("rlnModelStarFile", "rlnModelStarFile2"), models, strict=False),
        ("rlnExperimentalDataStarFile", "data"),
        ("rlnOrientSamplingStarFile", "sampling"),
    )
    for label, kind in labelled:
        named = Path(str(optimiser.get(label, ""))).name
        if named != files[kind].name:
            raise CheckpointError(f"{optimiser_path.name} names {named!r} as its {kind} file")

    data_path = files["data"]
    data = _read_star(data_path)
    particles = _table(data, "particles", data_path)
    if "rlnClassNumber" not in particles.columns:
        raise CheckpointError(f"{data_path.name} has no rlnClassNumber column")
    optics = _table(data, "optics", data_path)
    for kind in models:
        subset = particles
        if halves:
            if "rlnRandomSubset" not in particles.columns:
                raise CheckpointError(f"{data_path.name} has no rlnRandomSubset column")
            subset = particles[particles["rlnRandomSubset"].astype(int) == int(kind[4])]
        _check_model(files[kind], data_path, optics, len(subset), classes)

    sampling_path = files["sampling"]
    sampling = _read_star(sampling_path)
    _single(sampling, "sampling_general", sampling_path)
    _table(sampling, "sampling_directions", sampling_path)
    box = int(
        _single(_read_star(files[models[0]]), "model_general", files[models[0]]).get(
            "rlnOriginalImageSize", 0
        )
    )
    maps = [k for k in files if k.startswith(("class", "half1_class", "half2_class"))]
    for kind in maps:
        _check_map(files[kind], box)


def _check_model(
    model_path: Path, data_path: Path, optics: pd.DataFrame, particles: int, classes: int
) -> None:
    """One model STAR against the iteration's data STAR: classes, noise blocks, and the
    particles it counts (an auto-refine's half model counts its half's)."""
    model = _read_star(model_path)
    general = _single(model, "model_general", model_path)
    if int(general.get("rlnNrClasses", -1)) != classes:
        raise CheckpointError(
            f"{model_path.name} has {general.get('rlnNrClasses')} classes, expected {classes}"
        )
    if len(_table(model, "model_classes", model_path)) != classes:
        raise CheckpointError(f"{model_path.name}: model_classes does not list {classes} classes")
    groups = _table(model, "model_groups", model_path)
    expected_blocks = [f"model_class_{k}" for k in range(1, classes + 1)]
    if any(name.startswith("model_optics_group_") for name in model):
        # RELION 4 and 5 keep the noise spectra per optics group.
        expected_blocks += [f"model_optics_group_{n}" for n in range(1, len(optics) + 1)]
    else:
        # RELION 3.1 keeps them per group.
        expected_blocks += [f"model_group_{g}" for g in groups["rlnGroupNumber"].astype(int)]
    expected_blocks += [f"model_pdf_orient_class_{k}" for k in range(1, classes + 1)]
    for name in expected_blocks:
        _table(model, name, model_path)
    particles_in_groups = int(groups["rlnGroupNrParticles"].sum())
    if particles != particles_in_groups:
        raise CheckpointError(
            f"{data_path.name} has {particles} particles for {model_path.name}, which counts "
            f"{particles_in_groups}"
        )


@dataclass
class ResumePoint:
    """What a (re)started job should do, and why."""

    action: str
    """"fresh" (no checkpoint), "continue" (from `iteration`) or "finished" (nothing to do)."""
    iteration: int | None
    requested_iterations: int
    passed_over: dict[int, str] = field(default_factory=dict)
    """Newer iterations that were not usable, with what was wrong."""
    restored_from_snapshot: bool = False


def snapshot_dir(root: Path) -> Path:
    return root.parent / f"{root.name}_checkpoint"


def _snapshot_iteration(root: Path) -> int | None:
    marker = snapshot_dir(root) / "ITERATION"
    if not marker.is_file():
        return None
    try:
        return int(marker.read_text().strip())
    except ValueError:
        return None


def take_snapshot(root: Path, iteration: int, classes: int, *, halves: bool = False) -> None:
    """Copy the checkpoint's files aside before RELION rewrites them; marker written last."""
    target = snapshot_dir(root)
    staging = root.parent / f"{root.name}_checkpoint.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in iteration_files(root, iteration, classes, halves=halves).values():
        shutil.copy2(path, staging / path.name)
    (staging / "ITERATION").write_text(f"{iteration}\n")
    old = root.parent / f"{root.name}_checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _restore_snapshot(root: Path, classes: int, *, halves: bool = False) -> int | None:
    """Put a damaged checkpoint iteration back from its snapshot; its iteration or None."""
    iteration = _snapshot_iteration(root)
    if iteration is None:
        return None
    saved = snapshot_dir(root)
    for path in iteration_files(root, iteration, classes, halves=halves).values():
        copy = saved / path.name
        if not copy.is_file():
            return None
        temporary = path.with_name(path.name + ".restoring")
        shutil.copy2(copy, temporary)
        os.replace(temporary, path)
    return iteration


def newest_complete_iteration(root: Path, classes: int, *, halves: bool = False) -> int | None:
    """The newest iteration whose files are all complete, read only (no snapshot restored): what
    an observer sees while no attempt runs, e.g. right after a reclaim took the job off its node."""
    for iteration in written_iterations(root):
        if iteration < 1:
            continue
        try:
            check_iteration(root, iteration, classes, halves=halves)
        except CheckpointError:
            continue
        return iteration
    return None


def find_resume_point(
    root: Path, classes: int, requested_iterations: int, *, halves: bool = False
) -> ResumePoint:
    """The newest complete iteration of the run at root (RELION's --o), or a fresh start.
    ``halves``: an auto-refine, finished when its final files are whole (requested_iterations
    is then 0: RELION decides when it has converged)."""
    passed_over: dict[int, str] = {}
    restored = False
    candidates = written_iterations(root)
    if halves and candidates and has_finished(root):
        # Converged: the final files are whole whatever became of the iterations before them.
        return ResumePoint("finished", candidates[0], requested_iterations, passed_over)
    snapshot = _snapshot_iteration(root)
    if snapshot is not None and snapshot not in candidates:
        candidates = sorted({*candidates, snapshot}, reverse=True)
    for iteration in candidates:
        if iteration < 1:
            continue
        try:
            check_iteration(root, iteration, classes, halves=halves)
        except CheckpointError as problem:
            if (
                iteration != snapshot
                or _restore_snapshot(root, classes, halves=halves) != iteration
            ):
                passed_over[iteration] = str(problem)
                continue
            try:
                check_iteration(root, iteration, classes, halves=halves)
            except CheckpointError as still:
                passed_over[iteration] = f"{problem}; its snapshot too: {still}"
                continue
            restored = True
        if halves:
            action = "finished" if has_finished(root) else "continue"
        else:
            action = "finished" if iteration >= requested_iterations else "continue"
        return ResumePoint(action, iteration, requested_iterations, passed_over, restored)
    return ResumePoint("fresh", None, requested_iterations, passed_over)


# ---- the command line RELION is started with ---------------------------------------------


def _program_index(argv: Sequence[str]) -> int:
    for index, word in enumerate(argv):
        if Path(word).name.startswith("relion_refine"):
            return index
    raise CheckpointError("the command does not run relion_refine or relion_refine_mpi")


def _option(args: Sequence[str], flag: str) -> str | None:
    values = [args[i + 1] for i, word in enumerate(args[:-1]) if word == flag]
    if flag in args and not values:
        raise CheckpointError(f"{flag} needs a value")
    return values[-1] if values else None


def _int_option(args: Sequence[str], flag: str, default: int | None) -> int:
    value = _option(args, flag)
    if value is None:
        if default is None:
            raise CheckpointError(f"the command has no {flag}")
        return default
    try:
        return int(value)
    except ValueError:
        raise CheckpointError(f"{flag} {value!r} is not a whole number") from None


_OPTIMISER = re.compile(r"^(?P<root>.+)_it(?P<iteration>\d{3,})_optimiser\.star$")


def _continued_classes(optimiser: Path, out: Path) -> int:
    """K of the run a fresh command continues into a new root (another job's run: RELION takes
    K from it, so the command carries no --K), read from that iteration's _model.star."""
    match = _OPTIMISER.match(str(optimiser))
    if match is None:
        raise CheckpointError(f"--continue {optimiser}: not a run's _itNNN_optimiser.star")
    if Path(match["root"]) == out:
        raise CheckpointError(
            "give the fresh command; --continue of the run's own iterations is worked out from it"
        )
    return run_classes(Path(match["root"]), int(match["iteration"]))


def run_classes(root: Path, iteration: int) -> int:
    """K of a run as its _model.star for that iteration records it."""
    import starfile

    model = Path(f"{iteration_root(root, iteration)}_model.star")
    try:
        return int(starfile.read(model, always_dict=True)["model_general"]["rlnNrClasses"])
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"no class count in {model} ({error})") from None


@dataclass(frozen=True)
class RefineCommand:
    """A fresh relion_refine command line, split into what resuming needs."""

    launcher: list[str]
    """Everything before the program (e.g. mpirun and its options); may be empty."""
    program: str
    args: list[str]
    root: Path
    classes: int
    iterations: int
    """--iter; 0 for an auto-refine, which runs until RELION finds it converged."""
    auto_refine: bool = False

    @classmethod
    def parse(cls, argv: Sequence[str]) -> RefineCommand:
        argv = list(argv)
        index = _program_index(argv)
        args = argv[index + 1 :]
        out = _option(args, "--o")
        if out is None:
            raise CheckpointError("the command has no --o (output root)")
        continued = _option(args, "--continue")
        if continued is None:
            classes = _int_option(args, "--K", 1)
        else:
            classes = _continued_classes(Path(continued), Path(out))
        auto_refine = "--auto_refine" in args
        if auto_refine and (continued is not None or "--iter" in args):
            raise CheckpointError("an auto-refine's fresh command has no --continue and no --iter")
        return cls(
            launcher=argv[:index],
            program=argv[index],
            args=args,
            root=Path(out),
            classes=classes,
            iterations=0 if auto_refine else _int_option(args, "--iter", 25),
            auto_refine=auto_refine,
        )

    def unstored_flags(self) -> list[str]:
        """The flags of the fresh command that RELION needs repeated on --continue."""
        carried: list[str] = []
        args = self.args
        for i, word in enumerate(args):
            if word in UNSTORED_VALUE_FLAGS and i + 1 < len(args):
                carried += [word, args[i + 1]]
            elif word in UNSTORED_SWITCHES:
                carried.append(word)
            elif word == GPU_FLAG:
                carried.append(word)
                following = args[i + 1] if i + 1 < len(args) else ""
                if following and not following.startswith("--"):
                    carried.append(following)
        return carried

    def fresh(self) -> list[str]:
        return [*self.launcher, self.program, *self.args]

    def continuation(self, iteration: int) -> list[str]:
        optimiser = f"{iteration_root(self.root, iteration)}_optimiser.star"
        until = [] if self.auto_refine else ["--iter", str(self.iterations)]
        return [
            *self.launcher,
            self.program,
            "--continue",
            optimiser,
            "--o",
            str(self.root),
            *until,
            *self.unstored_flags(),
        ]


# ---- resume history ----------------------------------------------------------------------


def history_path(root: Path) -> Path:
    return root.parent / f"{root.name}_resume.json"


def read_history(root: Path) -> dict:
    path = history_path(root)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    return {"run": root.name, "starts": [], "resumes": 0, "resumed_from": []}


def record_start(root: Path, point: ResumePoint) -> dict:
    """Append this start to the run's history (written atomically) and return the history."""
    history = read_history(root)
    history["starts"].append(
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": point.action,
            "from_iteration": point.iteration,
            "requested_iterations": point.requested_iterations,
            "passed_over": {str(k): v for k, v in point.passed_over.items()},
            "restored_from_snapshot": point.restored_from_snapshot,
        }
    )
    if point.action == "continue":
        history["resumes"] += 1
        history["resumed_from"].append(point.iteration)
    path = history_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(temporary, path)
    return history


@dataclass(frozen=True)
class Plan:
    point: ResumePoint
    argv: list[str] | None
    """The command to run now; None when the run has finished."""


def plan(command: RefineCommand) -> Plan:
    point = find_resume_point(
        command.root, command.classes, command.iterations, halves=command.auto_refine
    )
    if point.action == "finished":
        return Plan(point, None)
    if point.action == "continue":
        assert point.iteration is not None
        return Plan(point, command.continuation(point.iteration))
    return Plan(point, command.fresh())


def start(command: RefineCommand, *, cwd: Path | None = None) -> tuple[Plan, dict]:
    """Decide fresh/continue/finished, secure the checkpoint, record the start."""
    base = cwd or Path.cwd()
    local = RefineCommand(
        launcher=command.launcher, program=command.program, args=command.args,
        root=command.root if command.root.is_absolute() else base / command.root,
        classes=command.classes, iterations=command.iterations, auto_refine=command.auto_refine,
    )  # fmt: skip
    decided = plan(local)
    if decided.point.action == "continue":
        assert decided.point.iteration is not None
        if _snapshot_iteration(local.root) != decided.point.iteration:
            take_snapshot(
                local.root, decided.point.iteration, local.classes, halves=local.auto_refine
            )
    history = record_start(local.root, decided.point)
    argv = None
    if decided.point.action == "continue":
        assert decided.point.iteration is not None
        argv = command.continuation(decided.point.iteration)
    elif decided.point.action == "fresh":
        argv = command.fresh()
    return Plan(decided.point, argv), history


def describe(point: ResumePoint) -> str:
    lines = []
    for iteration, problem in point.passed_over.items():
        lines.append(f"iteration {iteration} is incomplete: {problem}")
    if point.restored_from_snapshot:
        lines.append(f"iteration {point.iteration} was restored from its snapshot")
    of = f" of {point.requested_iterations}" if point.requested_iterations else ""
    if point.action == "finished" and not point.requested_iterations:
        lines.append(f"finished: converged, iteration {point.iteration} is the last")
    elif point.action == "finished":
        lines.append(f"finished: iteration {point.iteration}{of} is complete")
    elif point.action == "continue":
        lines.append(f"continuing after iteration {point.iteration}{of}")
    else:
        lines.append("no complete iteration: starting fresh")
    return "\n".join(lines)


VERSION_TIMEOUT_SECONDS = 300
"""Asking the version may first mount the image; a node under load may take a while."""


def version_argv(command: RefineCommand) -> list[str]:
    """``relion_refine --version`` through the command's own launcher (apptainer exec ... SIF),
    without mpirun and its options: the same binary tree answers."""
    launcher = list(command.launcher)
    mpirun = next((i for i, w in enumerate(launcher) if Path(w).name == "mpirun"), None)
    if mpirun is not None:
        launcher = launcher[:mpirun]
    return [*launcher, "relion_refine", "--version"]


def ask_version(command: RefineCommand, cwd: Path, env: dict[str, str]) -> str | None:
    """The RELION version the job runs, as that RELION reports it; None (said on stderr) when
    it does not answer, which then fails the job at RELION's own start."""
    argv = version_argv(command)
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True,
            timeout=VERSION_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"checkpoint: RELION's version unknown ({err})", file=sys.stderr)
        return None
    match = re.search(r"RELION version:?\s*(\S+)", done.stdout + done.stderr)
    if match is None:
        print(f"checkpoint: RELION's version unknown (exit {done.returncode})", file=sys.stderr)
        return None
    return match.group(1)


def record_runtime(root: Path, version: str | None, launcher: Sequence[str]) -> None:
    """Which RELION the latest attempt ran, and through what, in the run's history."""
    history = read_history(root)
    history["relion_version"] = version
    history["launcher"] = shlex.join(launcher)
    path = history_path(root)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(temporary, path)


def run(command: RefineCommand, *, cwd: Path, progress_interval: float = 5.0) -> int:
    """Start or resume RELION in cwd and wait; publishes progress; forwards SIGTERM/SIGINT."""
    from relion_spot.jobs.job_dir import JobDirError, check_owner
    from relion_spot.relion.progress import Watcher
    from relion_spot.relion.tools import relion_env

    root = command.root if command.root.is_absolute() else cwd / command.root
    try:
        check_owner(root.parent, os.environ)
    except JobDirError as err:
        raise CheckpointError(str(err)) from None
    decided, history = start(command, cwd=cwd)
    print(
        f"checkpoint: {describe(decided.point)} (resumed {history['resumes']} times)",
        file=sys.stderr,
    )
    if decided.argv is None:
        Watcher(root=root, requested_iterations=command.iterations, interval=0).refresh(final=True)
        return 0
    env = relion_env()
    version = ask_version(command, cwd, env)
    record_runtime(root, version, command.launcher)
    print(
        f"checkpoint: RELION {version or '(version unknown)'} via "
        f"{shlex.join(command.launcher) or 'PATH'}",
        file=sys.stderr,
    )
    print(f"checkpoint: {shlex.join(decided.argv)}", file=sys.stderr, flush=True)
    follow_relion_conventions(command, decided.argv, cwd=cwd)
    started = time.monotonic()
    child = subprocess.Popen(
        decided.argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    copies = [
        _copy_stream(child.stdout, sys.stdout.buffer, root.parent / "run.out"),
        _copy_stream(child.stderr, sys.stderr.buffer, root.parent / "run.err"),
    ]

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Watcher(root=root, requested_iterations=command.iterations,
                     interval=progress_interval):  # fmt: skip
            returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for copy in copies:
            copy.join(timeout=30)
    print(
        f"checkpoint: {Path(command.program).name} exited {returncode} after "
        f"{time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return returncode


def follow_relion_conventions(command: RefineCommand, argv: Sequence[str], *, cwd: Path) -> None:
    """The job in the project's pipeline (once) and this attempt's command in note.txt, as
    RELION's GUI keeps them; a pipeline that cannot be written is a warning, never the job's
    end (the run itself is what matters)."""
    from relion_spot.jobs.job_dir import job_number
    from relion_spot.relion import pipeline

    job_dir = command.root.parent
    absolute = job_dir if job_dir.is_absolute() else cwd / job_dir
    pipeline.append_note(absolute, argv)
    number = job_number(absolute.name)
    if job_dir.is_absolute() or number is None:
        return
    if command.auto_refine:
        process = pipeline.refine3d_process(str(job_dir), command.args)
    else:
        process = pipeline.class3d_process(
            str(job_dir), command.args, iterations=command.iterations
        )
    holder = f"relion-spot job {os.environ.get('SLURM_JOB_ID', '?')} on {os.uname().nodename}"
    try:
        if pipeline.register(cwd, process, job_number=number, holder=holder):
            print(f"checkpoint: {process.name} added to {pipeline.PIPELINE}", file=sys.stderr)
    except (pipeline.PipelineError, OSError) as err:
        print(
            f"checkpoint: warning: {process.name} not added to the pipeline: {err}", file=sys.stderr
        )


def _copy_stream(source: IO[bytes] | None, echo: IO[bytes], log_path: Path) -> threading.Thread:
    """RELION's output to the job's own output (Slurm's file) and to run.out / run.err in the
    job directory, as RELION's GUI keeps them, appended across attempts."""

    def copy() -> None:
        assert source is not None
        with log_path.open("ab") as log_file:
            for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
                echo.write(chunk)
                echo.flush()
                log_file.write(chunk)
                log_file.flush()

    thread = threading.Thread(target=copy, name=f"copy-{log_path.name}", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.checkpoint",
        description="Start, resume or skip a relion_refine classification from its checkpoints.",
    )
    parser.add_argument(
        "mode",
        choices=("plan", "run"),
        help="plan: print the command; run: also record the start and run it",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="-- then the fresh relion_refine command (with --o, --K, --iter)",
    )
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        command = RefineCommand.parse(words)
        if args.mode == "plan":
            decided = plan(command)
            print(describe(decided.point), file=sys.stderr)
            if decided.argv is not None:
                print(shlex.join(decided.argv))
            return 0
        return run(command, cwd=Path.cwd())
    except CheckpointError as error:
        print(f"checkpoint: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
