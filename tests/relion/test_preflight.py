"""Preflight's bad-input matrix: each mistake is one clear line, exit 2, nothing run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from relion_spot.relion.preflight import expected_current_size, gpu_bytes_per_class, main

BOX, ANGPIX, IMAGES = 32, 2.0, 12


def _optics(angpix: float = ANGPIX) -> pd.DataFrame:
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [angpix],
                         "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny, valid classification input: stack, particles STAR, reference map."""
    rng = np.random.default_rng(0)
    with mrcfile.new(tmp_path / "stack.mrcs") as mrc:
        mrc.set_data(rng.normal(size=(IMAGES, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = ANGPIX
    with mrcfile.new(tmp_path / "ref.mrc") as mrc:
        mrc.set_data(rng.normal(size=(BOX, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = ANGPIX
    particles = pd.DataFrame({"rlnImageName": [f"{i:06d}@stack.mrcs" for i in range(1, 13)],
                              "rlnOpticsGroup": 1})  # fmt: skip
    starfile.write({"optics": _optics(), "particles": particles}, tmp_path / "p.star")
    return tmp_path


def _command(**changes: str | None) -> list[str]:
    options: dict[str, str | None] = {
        "--i": "p.star", "--ref": "ref.mrc", "--o": "C/run", "--K": "2", "--iter": "5",
        "--particle_diameter": "56", "--ctf": None, "--gpu": None, "--j": "4",
        "--scratch_dir": "/scratch",
    }  # fmt: skip
    for flag, value in changes.items():
        key = f"--{flag}"
        if value == "DROP":
            options.pop(key)
        else:
            options[key] = value
    argv = ["relion_refine"]
    for flag, value in options.items():
        argv += [flag] if value is None else [flag, value]
    return argv


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def preflight(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Preflight's command line, in process (the subprocess test below covers the real exit)."""

    def run(project: Path, argv: list[str], types: str = "g5.xlarge", *extra: str) -> Outcome:
        code = main(["--project-dir", str(project), "--instance-types", types, *extra, "--", *argv])
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return run


def test_refusal_exits_non_zero_from_a_real_process(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relion_spot.relion.preflight", "--project-dir", str(project),
         "--instance-types", "g5.xlarge", "--", *_command(K="0")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "preflight: --K 0: the number of classes must be 1 or more\n"


def test_valid_input_passes(project: Path, preflight: Callable[..., Outcome]) -> None:
    done = preflight(project, _command())
    assert done.returncode == 0, done.stderr
    assert "preflight ok: 12 particles, box 32 at 2 Å/px, K=2, 5 iterations" in done.stdout


def _break_star(project: Path) -> None:
    (project / "p.star").write_text("data_particles\nloop_\n_rlnImageName #1\n\x00\x01 broken")


def _drop_stack(project: Path) -> None:
    (project / "stack.mrcs").unlink()


def _short_stack(project: Path) -> None:
    with mrcfile.new(project / "stack.mrcs", overwrite=True) as mrc:
        mrc.set_data(np.zeros((IMAGES - 2, BOX, BOX), dtype=np.float32))


def _other_pixel(project: Path) -> None:
    with mrcfile.open(project / "ref.mrc", "r+") as mrc:
        mrc.voxel_size = 2.5


def _other_box(project: Path) -> None:
    with mrcfile.new(project / "ref.mrc", overwrite=True) as mrc:
        mrc.set_data(np.zeros((40, 40, 40), dtype=np.float32))
        mrc.voxel_size = ANGPIX


Damage = Callable[[Path], None] | None
CASES: dict[str, tuple[Damage, dict[str, str | None], str]] = {
    "missing STAR": (None, {"i": "nope.star"}, "particles STAR {p}/nope.star does not exist"),
    "unreadable STAR": (_break_star, {}, "particles STAR {p}/p.star"),
    "missing image file": (_drop_stack, {}, "image stack {p}/stack.mrcs (named in"),
    "stack shorter than the STAR": (_short_stack, {}, "holds 10 images; {p}/p.star names #12"),
    "pixel-size mismatch": (_other_pixel, {}, "ref.mrc has 2.5 Å/px; the particles have 2 Å/px"),
    "box mismatch": (_other_box, {}, "ref.mrc has box 40; the particles have box 32"),
    "diameter larger than box": (None, {"particle_diameter": "80"},
                                 "--particle_diameter 80 Å does not fit the box"),
    "K=0": (None, {"K": "0"}, "--K 0: the number of classes must be 1 or more"),
    "iterations=0": (None, {"iter": "0"}, "--iter 0: iterations must be 1 or more"),
    "misspelt flag": (None, {"tau2_fuge": "4"},
                      "does not know the flag --tau2_fuge (did you mean --tau2_fudge?)"),
    "flag without value": (None, {"pool": None}, "relion_refine flag --pool needs a value"),
    "no reference": (None, {"ref": "DROP"}, "relion_refine needs --ref"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_message(
    project: Path, case: str, preflight: Callable[..., Outcome]
) -> None:
    damage, changes, message = CASES[case]
    if damage is not None:
        damage(project)
    done = preflight(project, _command(**changes))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message.format(p=project) in done.stderr


def test_gpu_group_too_small_names_one_that_fits(
    tmp_path: Path, preflight: Callable[..., Outcome]
) -> None:
    # Box 256, K=20 at Nyquist: ~27 GiB, more than an A10G or L4 holds, less than an L40S.
    big = 256
    with mrcfile.new_mmap(tmp_path / "stack.mrcs", shape=(1, big, big), mrc_mode=2) as mrc:
        mrc.voxel_size = ANGPIX
    with mrcfile.new_mmap(tmp_path / "ref.mrc", shape=(big, big, big), mrc_mode=0) as mrc:
        mrc.voxel_size = ANGPIX
    particles = pd.DataFrame({"rlnImageName": ["000001@stack.mrcs"], "rlnOpticsGroup": [1]})
    starfile.write({"optics": _optics(), "particles": particles}, tmp_path / "p.star")
    argv = _command(K="20", particle_diameter="400")
    done = preflight(tmp_path, argv, "g5.xlarge,g6.xlarge", "--resolution-limit", "4")
    assert done.returncode == 2
    assert "exceeds the 22 GiB per GPU of g5.xlarge (NVIDIA A10G)" in done.stderr
    assert "a node group of g6e.xlarge" in done.stderr


def test_stacks_larger_than_the_nvme_pass_with_a_note_as_relion_copes(
    project: Path, preflight: Callable[..., Outcome]
) -> None:
    """RELION copies what fits to scratch and reads the rest from the shared file system."""
    done = preflight(project, _command(keep_free_scratch="500"), "g5.xlarge")
    assert done.returncode == 0, done.stderr
    assert "exceed the 250 GB NVMe of g5.xlarge: RELION copies what fits" in done.stdout


def _mask(project: Path, values: np.ndarray, angpix: float = ANGPIX) -> None:
    with mrcfile.new(project / "mask.mrc", overwrite=True) as mrc:
        mrc.set_data(values.astype(np.float32))
        mrc.voxel_size = angpix


def _soft_sphere() -> np.ndarray:
    z, y, x = np.indices((BOX, BOX, BOX)) - BOX / 2
    radius = np.sqrt(x * x + y * y + z * z)
    return np.clip((12 - radius) / 4, 0, 1)


def test_a_solvent_mask_on_the_particles_grid_passes_with_its_coverage(
    project: Path, preflight: Callable[..., Outcome]
) -> None:
    _mask(project, _soft_sphere())
    done = preflight(project, _command(solvent_mask="mask.mrc"))
    assert done.returncode == 0, done.stderr
    assert "preflight note: solvent mask mask.mrc: " in done.stdout
    assert "of the box inside (value > 0.5)" in done.stdout


MASK_CASES: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    "missing": (None, "solvent mask {p}/mask.mrc does not exist"),
    "other box": (lambda p: _mask(p, np.ones((16, 16, 16)) * 0.5), "has box 16; the particles"),
    "not a cube": (lambda p: _mask(p, np.ones((BOX, BOX, 16)) * 0.5), f"is 16x{BOX}x{BOX}"),
    "other pixel": (lambda p: _mask(p, _soft_sphere(), 3.0), "has 3 Å/px; the particles have 2"),
    "beyond 0..1": (lambda p: _mask(p, _soft_sphere() * 5), "values from 0 to 5; a mask's are"),
    "empty": (lambda p: _mask(p, np.zeros((BOX, BOX, BOX))), "is empty (no value above 0)"),
    "not an MRC": (lambda p: (p / "mask.mrc").write_text("mask"), "is not a readable MRC"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_a_solvent_mask_relion_cannot_use_is_one_clear_message(
    project: Path, case: str, preflight: Callable[..., Outcome]
) -> None:
    damage, message = MASK_CASES[case]
    if damage is not None:
        damage(project)
    done = preflight(project, _command(solvent_mask="mask.mrc"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message.format(p=project) in done.stderr


def test_unknown_instance_type_is_refused(project: Path, preflight: Callable[..., Outcome]) -> None:
    done = preflight(project, _command(), "g5.huge")
    assert done.returncode == 2
    assert "instance type 'g5.huge' is not a known GPU type" in done.stderr


def test_gpu_estimate_matches_the_benchmark_figures() -> None:
    # Box 360 at 1.34 Å/px: ~3.8 GB per class at Nyquist, ~0.14 GB per class near 10 Å.
    assert gpu_bytes_per_class(360) / 1e9 == pytest.approx(3.79, abs=0.01)
    near_10 = expected_current_size(360, 1.34, 9.65)
    assert gpu_bytes_per_class(near_10) / 1e9 == pytest.approx(0.145, abs=0.01)


def test_optics_groups_of_different_pixel_sizes_pass_with_a_note_on_the_first_groups_grid(
    project: Path, preflight: Callable[..., Outcome]
) -> None:
    """RELION refines them together; the reference must be on the first group's grid."""
    optics = pd.concat([_optics(), _optics(2.1).assign(rlnOpticsGroup=[2])], ignore_index=True)
    particles = pd.DataFrame(
        {"rlnImageName": [f"{i:06d}@stack.mrcs" for i in range(1, 13)],
         "rlnOpticsGroup": [1] * 6 + [2] * 6}
    )  # fmt: skip
    starfile.write({"optics": optics, "particles": particles}, project / "p.star", overwrite=True)
    done = preflight(project, _command())
    assert done.returncode == 0, done.stderr
    assert "optics groups with pixel sizes 2, 2.1 Å: RELION refines them together" in done.stdout
