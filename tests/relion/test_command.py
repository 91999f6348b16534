"""The fresh command → continuation: what RELION keeps, what must be given again."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relion_spot.relion.checkpoint import CheckpointError, RefineCommand

BENCHMARK = shlex.split(
    "relion_refine --i Particles/shiny_2sets.star --ref emd_2660.map:mrc --firstiter_cc "
    "--ini_high 60 --ctf --ctf_corrected_ref --iter 25 --tau2_fudge 4 --particle_diameter 360 "
    "--K 6 --flatten_solvent --zero_mask --oversampling 1 --healpix_order 2 --offset_range 5 "
    "--offset_step 2 --sym C1 --norm --scale --random_seed 0 --pool 30 --j 6 --gpu "
    "--scratch_dir /scratch --o Class3D/job001/run"
)


def test_single_gpu_continuation_repeats_only_unstored_flags() -> None:
    command = RefineCommand.parse(BENCHMARK)
    assert (command.root, command.classes, command.iterations) == (
        Path("Class3D/job001/run"), 6, 25,
    )  # fmt: skip
    assert command.continuation(20) == [
        "relion_refine", "--continue", "Class3D/job001/run_it020_optimiser.star",
        "--o", "Class3D/job001/run", "--iter", "25",
        "--pool", "30", "--j", "6", "--gpu", "--scratch_dir", "/scratch",
    ]  # fmt: skip
    assert command.fresh() == BENCHMARK


def test_a_resume_gives_skip_align_again_as_relion_5_turns_it_off_on_continue() -> None:
    command = RefineCommand.parse([*BENCHMARK, "--skip_align", "--skip_rotate"])
    continued = command.continuation(7)
    assert continued[-2:] == ["--skip_align", "--skip_rotate"]


def test_mpi_launcher_and_gpu_list_are_kept() -> None:
    argv = [
        "mpirun", "-n", "5", "--mca", "plm", "^slurm", "--bind-to", "none",
        "relion_refine_mpi", "--i", "p.star", "--o", "C/run", "--K", "3", "--iter", "9",
        "--gpu", "0:1:2:3", "--dont_combine_weights_via_disc", "--j", "4",
    ]  # fmt: skip
    command = RefineCommand.parse(argv)
    assert command.continuation(4) == [
        "mpirun", "-n", "5", "--mca", "plm", "^slurm", "--bind-to", "none",
        "relion_refine_mpi", "--continue", "C/run_it004_optimiser.star", "--o", "C/run",
        "--iter", "9", "--gpu", "0:1:2:3", "--dont_combine_weights_via_disc", "--j", "4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "--o", "x"], "does not run relion_refine"),
        (["relion_refine", "--i", "p.star", "--K", "2"], "has no --o"),
        (["relion_refine", "--o", "C/run", "--K", "two"], "--K 'two' is not a whole number"),
        (["relion_refine", "--continue", "a_it003_optimiser.star", "--o", "a"], "fresh command"),
        (["relion_refine", "--i", "p.star", "--o"], "--o needs a value"),
    ],
)
def test_unusable_commands_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        RefineCommand.parse(argv)


def test_cli_refuses_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relion_spot.relion.checkpoint", "plan", "--",
         "relion_refine", "--i", "p.star", "--K", "2"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "checkpoint: the command has no --o (output root)"


def test_cli_plans_a_fresh_start_when_nothing_was_written(tmp_path: Path) -> None:
    argv = ["relion_refine", "--i", "p.star", "--o", "C/run", "--K", "2", "--iter", "5"]
    done = subprocess.run(
        [sys.executable, "-m", "relion_spot.relion.checkpoint", "plan", "--", *argv],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == argv
    assert "starting fresh" in done.stderr
