"""Ground-truthed synthetic particles for proving RELION 3D classification end to end.

K pseudo-atomic volumes share a non-planar four-lobe core and differ by one class-specific lobe.
RELION itself projects them (`relion_project --ctf --add_noise --white_noise`) at random angles
with small offsets and a handful of defocus groups; `relion_preprocess` normalises them; the
reference is the consensus reconstruction of all particles, low-passed. The truth file maps every
particle image to the class it was projected from, so a classification can be scored.

The layout is small enough (box 40 at 4 Å/px) for a 2-core CPU to classify 200 particles in
under a minute, and shaped so it does classify: flat or few-blob designs do not align.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from relion_spot.node.no_follow import read_small
from relion_spot.relion.tools import RelionToolError, run_tool

PARTICLES_STAR = "particles.star"
PARTICLES_STACK = "particles.mrcs"
REFERENCE_MAP = "reference.mrc"
TRUTH_STAR = "truth.star"
MANIFEST = "synthetic.json"
LOG = "synthetic.log"

_VOLTAGE_KV = 300.0
_CS_MM = 2.7
_AMPLITUDE_CONTRAST = 0.1
_ATOM_SIGMA_PX = 1.2
_LOBE_SPREAD_PX = 1.4
_CORE_LOBES_PX = ((6.5, 0.5, -2.0), (-3.0, 6.0, -2.5), (-3.5, -5.5, -1.0), (0.5, -0.5, 6.5))
"""Four lobes around the centre, not in one plane, so every projection direction is distinct."""
_CORE_LOBE_ATOMS = (6, 8, 10, 12)
"""Unequal lobes: the core has no symmetry a classification could confuse for a class."""
_CLASS_LOBE_ATOMS = 10
_CLASS_LOBE_RADIUS_PX = 8.0


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every figure that shapes the data set, so a manifest can replay it."""

    classes: int = 2
    particles_per_class: int = 100
    snr: float = 1.0
    box: int = 40
    angpix: float = 4.0
    micrographs: int = 10
    defocus_min_angstrom: float = 15000.0
    defocus_max_angstrom: float = 35000.0
    offset_sigma_px: float = 1.0
    reference_lowpass_angstrom: float = 30.0
    seed: int = 0

    @property
    def particle_diameter_angstrom(self) -> float:
        """The mask diameter to classify with: the volumes fit well inside 80 % of the box."""
        return round(0.8 * self.box * self.angpix, 1)

    @property
    def particles(self) -> int:
        return self.classes * self.particles_per_class

    def problems(self) -> list[str]:
        """Every value out of range, each naming the value and what is accepted."""
        found = []
        if not 1 <= self.classes <= 50:
            found.append(f"classes={self.classes}: must be between 1 and 50")
        if not 1 <= self.particles_per_class <= 100_000:
            found.append(
                f"particles per class={self.particles_per_class}: must be between 1 and 100000"
            )
        if not self.snr > 0:
            found.append(f"snr={self.snr}: must be greater than 0")
        if not (32 <= self.box <= 256 and self.box % 2 == 0):
            found.append(f"box={self.box}: must be an even number of pixels from 32 to 256")
        if not 0.5 <= self.angpix <= 20:
            found.append(f"angpix={self.angpix}: must be between 0.5 and 20 Å")
        if not 1 <= self.micrographs <= 1000:
            found.append(f"micrographs={self.micrographs}: must be between 1 and 1000")
        if not 0 < self.defocus_min_angstrom <= self.defocus_max_angstrom:
            found.append(
                f"defocus range {self.defocus_min_angstrom}-{self.defocus_max_angstrom} Å: "
                "needs 0 < min ≤ max"
            )
        if not 0 <= self.offset_sigma_px <= self.box / 8:
            found.append(
                f"offset sigma={self.offset_sigma_px} px: must be between 0 and box/8 "
                f"({self.box / 8:g} px)"
            )
        nyquist = 2 * self.angpix
        if not self.reference_lowpass_angstrom > nyquist:
            found.append(
                f"reference low-pass={self.reference_lowpass_angstrom} Å: must be coarser than "
                f"Nyquist ({nyquist:g} Å)"
            )
        return found


@dataclass(frozen=True)
class SyntheticResult:
    """Where the generated data set lives and the figures that describe it."""

    out: Path
    particles_star: Path
    reference: Path
    truth: Path
    volumes: list[Path]
    noise_sigma: float
    signal_variance: float
    seconds: float


def _fibonacci_directions(count: int) -> np.ndarray:
    """Nearly uniform unit vectors, deterministic: the candidate sites for class lobes."""
    index = np.arange(count) + 0.5
    z = 1 - 2 * index / count
    radius = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * index
    return np.stack([radius * np.cos(phi), radius * np.sin(phi), z], axis=1)


def class_lobe_centres(classes: int) -> np.ndarray:
    """One site per class, each as far as possible from the core lobes and the other classes."""
    candidates = _fibonacci_directions(400) * _CLASS_LOBE_RADIUS_PX
    taken = [np.array(c) for c in _CORE_LOBES_PX]
    chosen: list[np.ndarray] = []
    for _ in range(classes):
        distances = np.min(
            np.linalg.norm(candidates[:, None, :] - np.array(taken)[None, :, :], axis=2), axis=1
        )
        best = candidates[int(np.argmax(distances))]
        chosen.append(best)
        taken.append(best)
    return np.array(chosen)


def _lobe_atoms(rng: np.random.Generator, centre: np.ndarray, atoms: int) -> np.ndarray:
    return centre + rng.normal(scale=_LOBE_SPREAD_PX, size=(atoms, 3))


def _render(atoms: np.ndarray, box: int) -> np.ndarray:
    """Sum of isotropic Gaussians at atom positions (pixels from the box centre), as z, y, x."""
    axis = np.arange(box, dtype=np.float64) - box // 2
    volume = np.zeros((box, box, box), dtype=np.float64)
    two_sigma2 = 2 * _ATOM_SIGMA_PX**2
    for x, y, z in atoms:
        gx = np.exp(-((axis - x) ** 2) / two_sigma2)
        gy = np.exp(-((axis - y) ** 2) / two_sigma2)
        gz = np.exp(-((axis - z) ** 2) / two_sigma2)
        volume += gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return volume.astype(np.float32)


def make_volumes(spec: SyntheticSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """K volumes: the shared core (same atoms in every class) plus each class's own lobe."""
    scale = spec.box / 40
    core = np.concatenate(
        [
            _lobe_atoms(rng, np.array(c) * scale, n)
            for c, n in zip(_CORE_LOBES_PX, _CORE_LOBE_ATOMS, strict=True)
        ]
    )
    volumes = []
    for centre in class_lobe_centres(spec.classes):
        lobe = _lobe_atoms(rng, centre * scale, _CLASS_LOBE_ATOMS)
        volumes.append(_render(np.concatenate([core, lobe]), spec.box))
    return volumes


def _optics(spec: SyntheticSpec) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [_AMPLITUDE_CONTRAST],
            "rlnSphericalAberration": [_CS_MM],
            "rlnVoltage": [_VOLTAGE_KV],
            "rlnImagePixelSize": [spec.angpix],
            "rlnImageSize": [spec.box],
            "rlnImageDimensionality": [2],
        }
    )


def draw_particles(spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Per particle: true class, uniformly random orientation, offset and micrograph's CTF."""
    n = spec.particles
    classes = np.repeat(np.arange(1, spec.classes + 1), spec.particles_per_class)
    rng.shuffle(classes)
    mic_defocus = rng.uniform(
        spec.defocus_min_angstrom, spec.defocus_max_angstrom, spec.micrographs
    )
    mic_astigmatism = rng.uniform(0, 300, spec.micrographs)
    mic_angle = rng.uniform(0, 180, spec.micrographs)
    mic = rng.integers(0, spec.micrographs, n)
    # Uniform on SO(3): rot and psi uniform, cos(tilt) uniform.
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    offsets = rng.normal(scale=spec.offset_sigma_px * spec.angpix, size=(n, 2))
    return pd.DataFrame(
        {
            "rlnMicrographName": [f"Micrographs/mic_{m + 1:03d}.mrc" for m in mic],
            "rlnDefocusU": np.round(mic_defocus[mic] + mic_astigmatism[mic] / 2, 2),
            "rlnDefocusV": np.round(mic_defocus[mic] - mic_astigmatism[mic] / 2, 2),
            "rlnDefocusAngle": np.round(mic_angle[mic], 2),
            "rlnAngleRot": np.round(rot, 4),
            "rlnAngleTilt": np.round(tilt, 4),
            "rlnAnglePsi": np.round(psi, 4),
            "rlnOriginXAngst": np.round(offsets[:, 0], 4),
            "rlnOriginYAngst": np.round(offsets[:, 1], 4),
            "rlnOpticsGroup": 1,
            "rlnClassNumber": classes,
        }
    )


def _write_star(path: Path, optics: pd.DataFrame, particles: pd.DataFrame) -> None:
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)


def generate(spec: SyntheticSpec, out: Path, *, overwrite: bool = False) -> SyntheticResult:
    """Write the data set into out (created; must be empty unless overwrite) and return it."""
    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(problems))
    started = time.monotonic()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: choose an empty directory or overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    (out / "volumes").mkdir()
    work.mkdir()
    log = out / LOG
    rng = np.random.default_rng(spec.seed)

    volume_paths = []
    for k, volume in enumerate(make_volumes(spec, rng), start=1):
        path = out / "volumes" / f"class_{k:02d}.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(volume)
            mrc.voxel_size = spec.angpix
        volume_paths.append(path)

    optics = _optics(spec)
    drawn = draw_particles(spec, rng)
    angles = drawn.drop(columns=["rlnClassNumber"])

    # Pass 1, noise-free: measure the signal variance each class's images actually have (over
    # the whole box), so the noise level gives the requested SNR after RELION's CTF and projection.
    variances = []
    for k, volume_path in enumerate(volume_paths, start=1):
        own = angles[drawn["rlnClassNumber"] == k]
        _write_star(work / f"clean_{k:02d}_angles.star", optics, own)
        run_tool(
            ["relion_project", "--i", volume_path.relative_to(out), "--o", f"work/clean_{k:02d}",
             "--ang", f"work/clean_{k:02d}_angles.star", "--ctf", "--angpix", spec.angpix],
            cwd=out, log=log,
        )  # fmt: skip
        with mrcfile.open(work / f"clean_{k:02d}.mrcs") as mrc:
            images = np.asarray(mrc.data, dtype=np.float64).reshape(-1, spec.box, spec.box)
        variances.append(float(np.mean(np.var(images, axis=(1, 2)))))
    signal_variance = float(np.mean(variances))
    noise_sigma = float(np.sqrt(signal_variance / spec.snr))

    # Pass 2, noisy: every volume projects every particle's geometry and each particle keeps the
    # image of its own class. RELION's noise generator cannot be seeded, so separate per-class
    # runs would give particle i of every class the same noise; one long run per volume does not.
    _write_star(work / "all_angles.star", optics, angles)
    for k, volume_path in enumerate(volume_paths, start=1):
        run_tool(
            ["relion_project", "--i", volume_path.relative_to(out), "--o", f"work/noisy_{k:02d}",
             "--ang", "work/all_angles.star", "--ctf", "--angpix", spec.angpix,
             "--add_noise", "--white_noise", f"{noise_sigma:.6g}"],
            cwd=out, log=log,
        )  # fmt: skip
    # relion_preprocess normalises stacks, not STAR files (3.1): gather each particle's own
    # image, in particle order, into one raw stack first.
    raw_stack = work / "raw.mrcs"
    with mrcfile.new_mmap(raw_stack, shape=(spec.particles, spec.box, spec.box), mrc_mode=2) as raw:
        for k in range(1, spec.classes + 1):
            own = np.flatnonzero(drawn["rlnClassNumber"].to_numpy() == k)
            with mrcfile.open(work / f"noisy_{k:02d}.mrcs") as noisy:
                raw.data[own] = noisy.data[own]
        raw.voxel_size = spec.angpix
    for k in range(1, spec.classes + 1):
        (work / f"noisy_{k:02d}.mrcs").unlink()

    bg_radius = round(spec.particle_diameter_angstrom / spec.angpix / 2)
    run_tool(
        ["relion_preprocess", "--operate_on", "work/raw.mrcs", "--operate_out",
         PARTICLES_STACK, "--norm", "--bg_radius", bg_radius],
        cwd=out, log=log,
    )  # fmt: skip
    with mrcfile.open(out / PARTICLES_STACK, header_only=True) as stack:
        written = int(stack.header.nz)
    if written != spec.particles:
        raise RelionToolError(
            f"relion_preprocess wrote {written} particles to {PARTICLES_STACK}, "
            f"expected {spec.particles}"
        )
    image_names = [f"{i + 1:06d}@{PARTICLES_STACK}" for i in range(spec.particles)]

    truth = drawn.copy()
    truth.insert(0, "rlnImageName", image_names)
    _write_star(out / TRUTH_STAR, optics, truth)

    # The consensus (all classes, true poses) is what a real project would refine first.
    run_tool(
        ["relion_reconstruct", "--i", TRUTH_STAR, "--o", "work/consensus.mrc", "--ctf"],
        cwd=out, log=log,
    )  # fmt: skip
    run_tool(
        ["relion_image_handler", "--i", "work/consensus.mrc", "--o", REFERENCE_MAP,
         "--lowpass", spec.reference_lowpass_angstrom],
        cwd=out, log=log,
    )  # fmt: skip

    # What a user would classify: images, micrograph and CTF only — no poses, no classes.
    blind = drawn[
        ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
    ].copy()
    blind.insert(0, "rlnImageName", image_names)
    _write_star(out / PARTICLES_STAR, optics, blind)

    shutil.rmtree(work)
    seconds = time.monotonic() - started
    result = SyntheticResult(
        out=out,
        particles_star=out / PARTICLES_STAR,
        reference=out / REFERENCE_MAP,
        truth=out / TRUTH_STAR,
        volumes=volume_paths,
        noise_sigma=noise_sigma,
        signal_variance=signal_variance,
        seconds=seconds,
    )
    manifest = {
        "spec": asdict(spec),
        "particle_diameter_angstrom": spec.particle_diameter_angstrom,
        "particles": spec.particles,
        "noise_sigma": round(noise_sigma, 6),
        "signal_variance": round(signal_variance, 6),
        "files": {
            "particles": PARTICLES_STAR,
            "stack": PARTICLES_STACK,
            "reference": REFERENCE_MAP,
            "truth": TRUTH_STAR,
            "volumes": [str(p.relative_to(out)) for p in volume_paths],
        },
        "seconds": round(seconds, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return result


PARTIAL_PREFIX = ".synthetic-partial-"
"""A job's own work area inside the project, named by its Slurm job id: what a requeued attempt
of the same job may throw away."""


MAX_MANIFEST_BYTES = 65536
"""A manifest is a page of JSON; anything larger (or not a regular file) is not one."""


def read_manifest(out: Path) -> dict | None:
    """The manifest in ``out`` read defensively, for a reader that may be root on a directory
    jobs write (the controller's preflight): a regular file only (no link followed, never a
    FIFO or a device), bounded; None when there is none or it is not one."""
    data = read_small(out / MANIFEST, MAX_MANIFEST_BYTES)
    if data is None:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


CLAIM = ".synthetic-claim"
"""Made atomically by the first attempt, holding its job id: two jobs never make a set in one
project at once, and a requeued attempt knows the project's files are its own."""
GENERATED_NAMES = (PARTICLES_STAR, PARTICLES_STACK, REFERENCE_MAP, TRUTH_STAR, MANIFEST, LOG,
                   "volumes")  # fmt: skip
"""What a generation moves up into the project."""


def _claimed_by(out: Path) -> str | None:
    try:
        fd = os.open(out / CLAIM, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, 64).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)


def _claim(out: Path, job_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise FileExistsError(
            f"{out} is being made by job {_claimed_by(out)}: one synthetic set per project"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(job_id + "\n")


def made_with(out: Path, spec: SyntheticSpec) -> bool:
    """Whether ``out`` holds a complete set generated from ``spec`` (its manifest says so)."""
    manifest = read_manifest(out)
    return manifest is not None and manifest.get("spec") == asdict(spec)


def generate_for_job(spec: SyntheticSpec, out: Path, job_id: str) -> SyntheticResult | None:
    """``generate`` as a requeueable cluster job: None when ``out`` already holds this set (a
    requeue of a finished attempt, or the set made before); otherwise made in the job's own work
    area inside ``out`` and moved up, the manifest last, so a set is complete once it has one.
    Anything else already in ``out`` is the lab's and refused (FileExistsError)."""
    if made_with(out, spec):
        return None
    partial = out / f"{PARTIAL_PREFIX}{job_id}"
    ours = _claimed_by(out) == job_id  # a requeue: the first attempt claimed the project
    found = {e.name for e in out.iterdir()} - {CLAIM, partial.name} if out.is_dir() else set()
    # A requeued attempt may replace what the first one moved up, and nothing else.
    foreign = found - set(GENERATED_NAMES) if ours else found
    if foreign:
        raise FileExistsError(
            f"{out} already holds {', '.join(sorted(foreign)[:3])}: a synthetic set is made only "
            "in a new or empty project (or one holding the same set)"
        )
    if not ours:
        _claim(out, job_id)
    if partial.exists():
        shutil.rmtree(partial)  # this job's own attempt, cut short
    result = generate(spec, partial)
    moved = sorted(partial.iterdir(), key=lambda entry: entry.name == MANIFEST)
    for entry in moved:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    partial.rmdir()
    (out / CLAIM).unlink()
    return replace(
        result,
        out=out,
        particles_star=out / PARTICLES_STAR,
        reference=out / REFERENCE_MAP,
        truth=out / TRUTH_STAR,
        volumes=[out / p.relative_to(partial) for p in result.volumes],
    )


def load_manifest(out: Path) -> dict:
    """The manifest a generation wrote: the spec and the figures a classification needs."""
    return json.loads((out / MANIFEST).read_text())


def load_result(out: Path) -> SyntheticResult:
    """A data set generated elsewhere (e.g. in a node container), described from its manifest."""
    manifest = load_manifest(out)
    files = manifest["files"]
    return SyntheticResult(
        out=out,
        particles_star=out / files["particles"],
        reference=out / files["reference"],
        truth=out / files["truth"],
        volumes=[out / name for name in files["volumes"]],
        noise_sigma=float(manifest["noise_sigma"]),
        signal_variance=float(manifest["signal_variance"]),
        seconds=float(manifest["seconds"]),
    )


def _parser() -> argparse.ArgumentParser:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.synthetic",
        description="Generate a ground-truthed K-class particle set with RELION.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (empty)")
    parser.add_argument("--classes", type=int, default=defaults.classes)
    parser.add_argument("--particles-per-class", type=int, default=defaults.particles_per_class)
    parser.add_argument("--snr", type=float, default=defaults.snr, help="signal/noise variance")
    parser.add_argument("--box", type=int, default=defaults.box, help="pixels")
    parser.add_argument("--angpix", type=float, default=defaults.angpix, help="Å per pixel")
    parser.add_argument(
        "--micrographs", type=int, default=defaults.micrographs, help="defocus groups"
    )
    parser.add_argument("--defocus-min", type=float, default=defaults.defocus_min_angstrom)
    parser.add_argument("--defocus-max", type=float, default=defaults.defocus_max_angstrom)
    parser.add_argument(
        "--offset-sigma", type=float, default=defaults.offset_sigma_px, help="pixels"
    )
    parser.add_argument(
        "--reference-lowpass", type=float, default=defaults.reference_lowpass_angstrom, help="Å"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--job-id",
        help="as a cluster job (requeueable): done when --out holds this set, refused when it "
        "holds anything else",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = SyntheticSpec(
        classes=args.classes,
        particles_per_class=args.particles_per_class,
        snr=args.snr,
        box=args.box,
        angpix=args.angpix,
        micrographs=args.micrographs,
        defocus_min_angstrom=args.defocus_min,
        defocus_max_angstrom=args.defocus_max,
        offset_sigma_px=args.offset_sigma,
        reference_lowpass_angstrom=args.reference_lowpass,
        seed=args.seed,
    )
    try:
        if args.job_id:
            made = generate_for_job(spec, args.out, args.job_id)
            if made is None:
                print(f"synthetic: {args.out} already holds this set (its manifest says so)")
                return 0
            result = made
        else:
            result = generate(spec, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError, RelionToolError) as error:
        print(f"synthetic: {error}", file=sys.stderr)
        return 2
    print(
        f"{spec.classes} classes x {spec.particles_per_class} particles, box {spec.box} at "
        f"{spec.angpix:g} Å/px, SNR {spec.snr:g} (noise sigma {result.noise_sigma:.4g}), "
        f"seed {spec.seed}, in {result.seconds:.1f} s"
    )
    print(f"  particles  {result.particles_star}  (classify these)")
    print(
        f"  reference  {result.reference}  (consensus, low-passed to "
        f"{spec.reference_lowpass_angstrom:g} Å)"
    )
    print(f"  truth      {result.truth}  (rlnClassNumber per rlnImageName)")
    print(f"  volumes    {', '.join(str(p) for p in result.volumes)}")
    print(f"  diameter   {spec.particle_diameter_angstrom:g} Å for --particle_diameter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
