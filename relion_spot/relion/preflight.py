"""Checks a RELION classification's inputs before any GPU is paid for.

Runs where a submission is accepted (never on a GPU node), in pure Python: the particles STAR
reads and its image stacks exist and hold the images it names; box and pixel size agree with the
reference map; the mask diameter fits the box; K and the iteration count are sensible; every
flag is one relion_refine knows (RELION itself only warns about unknown flags, so a typo would
silently run the wrong job); the stack fits the node's NVMe with RELION's free-space margin; and
the GPU memory RELION needs fits the node group's GPUs, or the message names a group that would.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import mrcfile
import pandas as pd
import starfile

from relion_spot import catalog

GPU_BYTES_PER_VOXEL = 20
"""Per class, RELION's GPU code holds about 20 bytes per voxel of the padded Fourier volume."""
DEFAULT_KEEP_FREE_SCRATCH_GB = 10
"""RELION's --keep_free_scratch default: the scratch copy needs this much left over."""
_PIXEL_TOLERANCE = 0.01
_GB = 1e9
_GIB = 2**30


class PreflightError(ValueError):
    """One input is wrong; the message names it and what is accepted."""


@cache
def _flags_record() -> dict:
    text = resources.files("relion_spot.relion").joinpath("relion_refine_flags.json").read_text()
    return dict(json.loads(text))


def refine_flags() -> dict[str, str]:
    """Every relion_refine(_mpi) option → "value", "switch" or "optional-value"."""
    return dict(_flags_record()["flags"])


def continue_flags() -> frozenset[str]:
    """The options relion_refine reads again on --continue; it keeps every other one from the
    run's _optimiser.star."""
    return frozenset(_flags_record()["continue_flags"])


def parse_refine_args(args: Sequence[str]) -> dict[str, str | None]:
    """relion_refine's options as {flag: value or None}; unknown flags are refused."""
    known = refine_flags()
    parsed: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--"):
            raise PreflightError(f"relion_refine argument {word!r} does not follow a flag")
        kind = known.get(word)
        if kind is None:
            close = _closest(word, known)
            hint = f" (did you mean {close}?)" if close else ""
            raise PreflightError(f"relion_refine does not know the flag {word}{hint}")
        following = args[i + 1] if i + 1 < len(args) else None
        takes = kind == "value" or (
            kind == "optional-value" and following is not None and not following.startswith("--")
        )
        if kind == "value" and (following is None or following.startswith("--")):
            raise PreflightError(f"relion_refine flag {word} needs a value")
        parsed[word] = following if takes else None
        i += 2 if takes else 1
    return parsed


def _closest(word: str, known: dict[str, str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


def _number(options: dict[str, str | None], flag: str, default: float | None) -> float:
    raw = options.get(flag)
    if raw is None:
        if default is None:
            raise PreflightError(f"relion_refine needs {flag}")
        return default
    try:
        return float(raw)
    except ValueError:
        raise PreflightError(f"{flag} {raw!r} is not a number") from None


@dataclass(frozen=True)
class Particles:
    star: Path
    count: int
    box: int
    angpix: float
    stacks: dict[Path, int]
    """Stack file → its size in bytes."""
    notes: list[str] = field(default_factory=list)
    """What RELION copes with but the lab should know (e.g. mixed pixel sizes)."""

    @property
    def stack_bytes(self) -> int:
        return sum(self.stacks.values())


def _pixel_size(blocks: dict, particles: pd.DataFrame, star: Path) -> float:
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame) and "rlnImagePixelSize" in optics.columns:
        # RELION (3.1 and later) refines optics groups of different pixel sizes together, on
        # the first group's grid: that is the size the reference and mask must have.
        return float(optics["rlnImagePixelSize"].astype(float).iloc[0])
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        detector = particles["rlnDetectorPixelSize"].astype(float)
        magnification = particles["rlnMagnification"].astype(float)
        sizes = (detector * 1e4 / magnification).round(4).unique()
        if len(sizes) > 1:
            raise PreflightError(f"{star}: particles have different pixel sizes {sizes}")
        return float(sizes[0])
    raise PreflightError(
        f"{star} gives no pixel size (rlnImagePixelSize in data_optics, or "
        "rlnDetectorPixelSize and rlnMagnification)"
    )


def read_particles(star: Path, project: Path) -> Particles:
    """The particle set, with every stack it names opened (header only) and checked."""
    if not star.is_file():
        raise PreflightError(f"particles STAR {star} does not exist")
    try:
        blocks = starfile.read(star, always_dict=True)
    except Exception as error:
        raise PreflightError(f"particles STAR {star} does not read as STAR: {error}") from error
    table = blocks.get("particles")
    if table is None and len(blocks) == 1:
        table = next(iter(blocks.values()))
    if not isinstance(table, pd.DataFrame) or "rlnImageName" not in table.columns:
        raise PreflightError(f"particles STAR {star} has no particle table with rlnImageName")
    if table.empty:
        raise PreflightError(f"particles STAR {star} lists no particles")
    angpix = _pixel_size(blocks, table, star)
    notes = []
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame) and "rlnImagePixelSize" in optics.columns:
        sizes = sorted({round(float(v), 4) for v in optics["rlnImagePixelSize"]})
        if len(sizes) > 1:
            notes.append(
                f"optics groups with pixel sizes {', '.join(f'{v:g}' for v in sizes)} Å: "
                f"RELION refines them together on the first group's {angpix:g} Å/px"
            )

    highest: dict[str, int] = {}
    for name in table["rlnImageName"].astype(str):
        index, at, stack = name.partition("@")
        if not at or not index.isdigit():
            raise PreflightError(f"{star}: image name {name!r} is not of the form N@stack.mrcs")
        highest[stack] = max(highest.get(stack, 0), int(index))

    stacks: dict[Path, int] = {}
    box = None
    for stack, needed in highest.items():
        path = Path(stack) if Path(stack).is_absolute() else project / stack
        if not path.is_file():
            raise PreflightError(f"image stack {path} (named in {star}) does not exist")
        try:
            with mrcfile.open(path, header_only=True, permissive=False) as mrc:
                nx, ny, nz = int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)
        except Exception as error:
            raise PreflightError(f"image stack {path} is not a readable MRC: {error}") from error
        if nz < needed:
            raise PreflightError(f"image stack {path} holds {nz} images; {star} names #{needed}")
        if nx != ny:
            raise PreflightError(f"image stack {path} has {nx}x{ny} images; they must be square")
        if box is not None and nx != box:
            raise PreflightError(f"image stack {path} has box {nx}, other stacks have {box}")
        box = nx
        stacks[path] = path.stat().st_size
    assert box is not None
    return Particles(
        star=star, count=len(table), box=box, angpix=angpix, stacks=stacks, notes=notes
    )


def read_reference(path: Path) -> tuple[int, float]:
    """Box and pixel size of the reference map."""
    name = Path(str(path).removesuffix(":mrc"))
    if not name.is_file():
        raise PreflightError(f"reference map {name} does not exist")
    try:
        with mrcfile.open(name, header_only=True, permissive=False) as mrc:
            dims = int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)
            angpix = float(mrc.voxel_size.x)
    except Exception as error:
        raise PreflightError(f"reference map {name} is not a readable MRC: {error}") from error
    if len(set(dims)) != 1:
        raise PreflightError(f"reference map {name} is {dims[0]}x{dims[1]}x{dims[2]}, not a cube")
    return dims[0], angpix


MASK_TOLERANCE = 1e-3
"""How far outside 0..1 a soft mask's values may stray (float rounding in masking tools)."""


def check_mask(path: Path, box: int, angpix: float) -> str:
    """A solvent mask RELION can use: a readable cubic MRC on the particles' box and pixel size,
    values from 0 to 1, not empty. Returns a one-line description for the report."""
    import numpy as np

    if not path.is_file():
        raise PreflightError(f"solvent mask {path} does not exist")
    try:
        with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
            data = mrc.data
            mask_angpix = float(mrc.voxel_size.x)
            if data is None or data.ndim != 3:
                raise PreflightError(f"solvent mask {path} is not a 3D map")
            shape = tuple(int(n) for n in data.shape)
            low, high = float(np.min(data)), float(np.max(data))
            inside = float(np.count_nonzero(data > 0.5)) / data.size
    except PreflightError:
        raise
    except Exception as error:
        raise PreflightError(f"solvent mask {path} is not a readable MRC: {error}") from error
    if len(set(shape)) != 1:
        size = "x".join(str(n) for n in reversed(shape))  # x, y, z as the MRC header has them
        raise PreflightError(f"solvent mask {path} is {size}, not a cube")
    if shape[0] != box:
        raise PreflightError(f"solvent mask {path} has box {shape[0]}; the particles have {box}")
    if abs(mask_angpix - angpix) > _PIXEL_TOLERANCE * angpix:
        raise PreflightError(
            f"solvent mask {path} has {mask_angpix:g} Å/px; the particles have {angpix:g} Å/px"
        )
    if low < -MASK_TOLERANCE or high > 1 + MASK_TOLERANCE:
        raise PreflightError(
            f"solvent mask {path} has values from {low:g} to {high:g}; a mask's are 0 to 1"
        )
    if high <= 0:
        raise PreflightError(f"solvent mask {path} is empty (no value above 0)")
    return f"solvent mask {path.name}: {inside:.1%} of the box inside (value > 0.5)"


def gpu_bytes_per_class(current_size: int, pad: float = 2) -> float:
    """GPU memory one class needs at a given image size (pixels) and padding factor."""
    padded = 2 * (round(pad * current_size / 2) + 1) + 1
    return GPU_BYTES_PER_VOXEL * padded**2 * (padded / 2 + 1)


def expected_current_size(box: int, angpix: float, resolution: float) -> int:
    """The image size RELION works at to reach a resolution (plus its 10-shell margin)."""
    shells = math.ceil(box * angpix / resolution)
    return min(box, 2 * (shells + 10))


@dataclass
class Report:
    particles: Particles
    classes: int
    iterations: int
    gpu_gib_needed: float
    scratch_gb_needed: float
    group: list[str]
    notes: list[str] = field(default_factory=list)


def _group_types(names: Sequence[str]) -> list[catalog.InstanceType]:
    types = []
    for name in names:
        found = catalog.INSTANCE_TYPES.get(name)
        if found is None or not found.gpus:
            accepted = ", ".join(catalog.gpu_types())
            raise PreflightError(f"instance type {name!r} is not a known GPU type ({accepted})")
        types.append(found)
    if not types:
        raise PreflightError("the node group lists no instance types")
    return types


def check(
    refine_args: Sequence[str],
    *,
    project: Path,
    instance_types: Sequence[str],
    resolution_limit: float | None = None,
) -> Report:
    """Every check, in the order a user would fix them; raises PreflightError at the first."""
    options = parse_refine_args(refine_args)
    if "--continue" in options:
        raise PreflightError("preflight checks a fresh command; --continue is added on resume")
    classes = _number(options, "--K", 1)
    if classes < 1 or classes != int(classes):
        raise PreflightError(f"--K {options['--K']}: the number of classes must be 1 or more")
    iterations = _number(options, "--iter", 50)
    if iterations < 1 or iterations != int(iterations):
        raise PreflightError(f"--iter {options['--iter']}: iterations must be 1 or more")
    for flag in ("--i", "--ref", "--o", "--particle_diameter"):
        if flag not in options:
            raise PreflightError(f"relion_refine needs {flag}")

    star = Path(str(options["--i"]))
    particles = read_particles(star if star.is_absolute() else project / star, project)
    reference = Path(str(options["--ref"]))
    ref_box, ref_angpix = read_reference(
        reference if reference.is_absolute() else project / reference
    )
    if ref_box != particles.box:
        raise PreflightError(
            f"reference map {reference} has box {ref_box}; the particles have box {particles.box}"
        )
    if abs(ref_angpix - particles.angpix) > _PIXEL_TOLERANCE * particles.angpix:
        raise PreflightError(
            f"reference map {reference} has {ref_angpix:g} Å/px; the particles have "
            f"{particles.angpix:g} Å/px"
        )
    notes: list[str] = list(particles.notes)
    if "--solvent_mask" in options:
        mask = Path(str(options["--solvent_mask"]))
        notes.append(
            check_mask(mask if mask.is_absolute() else project / mask, particles.box,
                       particles.angpix)
        )  # fmt: skip
    diameter = _number(options, "--particle_diameter", None)
    box_angstrom = particles.box * particles.angpix
    if not 0 < diameter <= box_angstrom:
        raise PreflightError(
            f"--particle_diameter {diameter:g} Å does not fit the box ({particles.box} px x "
            f"{particles.angpix:g} Å/px = {box_angstrom:g} Å)"
        )

    types = _group_types(instance_types)
    keep_free = _number(options, "--keep_free_scratch", DEFAULT_KEEP_FREE_SCRATCH_GB)
    scratch_needed = particles.stack_bytes / _GB + keep_free
    if "--scratch_dir" in options:
        smallest = min(types, key=lambda t: t.nvme_gb)
        if scratch_needed > smallest.nvme_gb:
            # RELION copies what fits and reads the rest from the shared file system.
            notes.append(
                f"the particle stacks ({particles.stack_bytes / _GB:.1f} GB) plus RELION's "
                f"--keep_free_scratch {keep_free:g} GB exceed the {smallest.nvme_gb} GB NVMe of "
                f"{smallest.name}: RELION copies what fits to scratch and reads the rest from "
                "/data, slower and (with EFS Elastic) billed per GiB read"
            )

    pad = _number(options, "--pad", 2)
    if resolution_limit is None:
        # A classification's resolution stays well short of Nyquist (the benchmark: 9.65 Å at
        # 2.68 Å Nyquist); --strict_highres_exp caps it outright.
        nyquist = 2 * particles.angpix
        resolution_limit = _number(options, "--strict_highres_exp", 2 * nyquist)
        if resolution_limit <= 0:
            resolution_limit = 2 * nyquist
    size = expected_current_size(particles.box, particles.angpix, resolution_limit)
    needed_gib = int(classes) * gpu_bytes_per_class(size, pad) / _GIB
    weakest = min(types, key=lambda t: t.gpu_memory_gib)
    if needed_gib > weakest.gpu_memory_gib:
        fits = sorted(
            {
                t.name
                for t in catalog.INSTANCE_TYPES.values()
                if t.gpus == weakest.gpus and t.gpu_memory_gib >= needed_gib
            },
            key=lambda n: catalog.INSTANCE_TYPES[n].on_demand_usd_hour,
        )
        advice = (
            f"a node group of {', '.join(fits[:3])} would fit"
            if fits
            else "no GPU type in the catalog fits: lower --K, use --pad 1, or a coarser limit"
        )
        raise PreflightError(
            f"estimated GPU memory {needed_gib:.1f} GiB for K={int(classes)} at image size "
            f"{size} px exceeds the {weakest.gpu_memory_gib:g} GiB per GPU of {weakest.name} "
            f"({weakest.gpu_model}); {advice}"
        )
    return Report(
        particles=particles,
        classes=int(classes),
        iterations=int(iterations),
        gpu_gib_needed=needed_gib,
        scratch_gb_needed=scratch_needed,
        group=[t.name for t in types],
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.preflight",
        description="Check a relion_refine classification's inputs before it is queued.",
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=Path.cwd(),
        help="directory RELION runs in; relative paths resolve here",
    )
    parser.add_argument(
        "--instance-types", required=True, help="EC2 types of the node group, comma-separated"
    )
    parser.add_argument(
        "--resolution-limit",
        type=float,
        default=None,
        help="best resolution (Å) to size GPU memory for; default twice Nyquist",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the relion_refine command"
    )
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not words or not Path(words[0]).name.startswith("relion_refine"):
            raise PreflightError("give the relion_refine command after --")
        report = check(
            words[1:],
            project=args.project_dir,
            instance_types=[t for t in args.instance_types.split(",") if t],
            resolution_limit=args.resolution_limit,
        )
    except PreflightError as error:
        print(f"preflight: {error}", file=sys.stderr)
        return 2
    p = report.particles
    print(
        f"preflight ok: {p.count} particles, box {p.box} at {p.angpix:g} Å/px, "
        f"K={report.classes}, {report.iterations} iterations; GPU ~{report.gpu_gib_needed:.1f} "
        f"GiB, scratch {report.scratch_gb_needed:.1f} GB on {','.join(report.group)}"
    )
    for note in report.notes:
        print(f"preflight note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
