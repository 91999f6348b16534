"""A continuation's parameters: only what RELION 5 reads again on --continue may be named."""

from __future__ import annotations

from pathlib import Path

import pytest
import starfile

from relion_spot.jobs.parameters import (
    CONTINUE_PARAMETERS,
    RANGES,
    SWITCHES,
    JobParameterError,
    from_mapping,
)
from relion_spot.relion.checkpoint import CheckpointError, RefineCommand
from relion_spot.relion.preflight import continue_flags

GIVEN = {"continue_from": "Class3D/job005:20", "iter": 30, "project_dir": "/data/lab"}


def test_what_may_change_is_what_relion_reads_again_and_what_may_not_is_not() -> None:
    rereads = continue_flags()
    assert {f"--{name}" for name in CONTINUE_PARAMETERS} <= rereads
    for fixed in ("--i", "--ref", "--K", "--sym", "--ctf", "--firstiter_cc", "--zero_mask"):
        assert fixed not in rereads, fixed
    named = {*RANGES, *SWITCHES, "solvent_mask", "sym", "particles", "reference"}
    for name in named - set(CONTINUE_PARAMETERS) - {"iter", "j", "pool"}:
        with pytest.raises(JobParameterError, match=rf"^parameter {name} cannot change when"):
            from_mapping({**GIVEN, name: getattr(from_mapping({"preset": "benchmark"}), name)})


def test_the_continuation_passes_the_run_its_stop_and_only_what_changed() -> None:
    params = from_mapping({**GIVEN, "tau2_fudge": "2", "healpix_order": 3, "skip_align": True,
                           "extra_flags": "--maxsig 500"})  # fmt: skip
    assert params.refine_args() == [
        "--continue", "Class3D/job005/run_it020_optimiser.star", "--iter", "30",
        "--tau2_fudge", "2", "--healpix_order", "3", "--skip_align", "--maxsig", "500",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**GIVEN, "continue_from": "Class3D/job005/run"}, "parameter continue_from = "),
        ({**GIVEN, "continue_from": "../Class3D/job005"}, "e.g. Class3D/job005 or Class3D/job0"),
        ({**GIVEN, "iter": 20}, "parameter iter = 20 is not valid when continuing from iteration"),
        ({**GIVEN, "preset": "benchmark"}, "parameters preset and continue_from exclude each"),
        ({k: v for k, v in GIVEN.items() if k != "iter"}, "a continuation must name iter (--iter)"),
        ({**GIVEN, "extra_flags": "--tau2_fudge_scheme x --K 3"}, "--K may not be given here"),
        ({**GIVEN, "extra_flags": "--adaptive_fraction 0.9"}, "--adaptive_fraction cannot change"),
        ({**GIVEN, "ini_high": 40}, "parameter ini_high cannot change when continuing"),
        ({**GIVEN, "extra_flags": ["--tau", "/etc/passwd"]}, "extra_flags --tau = '/etc/passwd'"),
    ],
)
def test_a_continuation_relion_would_not_honour_is_one_clear_message(
    values: dict, message: str
) -> None:
    with pytest.raises(JobParameterError) as refused:
        from_mapping(values)
    assert message in str(refused.value)


def test_an_explicit_no_skip_align_is_kept_as_a_change_and_a_null_mask_is_no_change() -> None:
    params = from_mapping({**GIVEN, "skip_align": False, "solvent_mask": None, "iter": 30.0})
    assert params.changed == ("skip_align",) and params.iter == 30
    assert params.refine_args() == [
        "--continue", "Class3D/job005/run_it020_optimiser.star", "--iter", "30",
    ]  # fmt: skip


def test_an_unnamed_iteration_is_refused_at_render_time_not_guessed() -> None:
    params = from_mapping({**GIVEN, "continue_from": "Class3D/job005"})
    with pytest.raises(JobParameterError, match="names no iteration: give Class3D/job005:N"):
        params.refine_args()


def _model(path: Path, classes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"model_general": {"rlnNrClasses": classes}}, path)


def test_the_job_wrapper_reads_k_from_the_run_it_continues(tmp_path: Path) -> None:
    _model(tmp_path / "Class3D/job005/run_it020_model.star", 4)
    source = str(tmp_path / "Class3D/job005/run_it020_optimiser.star")
    argv = ["relion_refine", "--continue", source,
            "--o", str(tmp_path / "Class3D/job007/run"), "--iter", "30"]  # fmt: skip
    command = RefineCommand.parse(argv)
    assert (command.classes, command.iterations) == (4, 30)
    assert command.fresh() == argv
    own = ["relion_refine", "--continue", str(tmp_path / "Class3D/job007/run_it021_optimiser.star"),
           "--o", str(tmp_path / "Class3D/job007/run"), "--iter", "30"]  # fmt: skip
    with pytest.raises(CheckpointError, match="give the fresh command"):
        RefineCommand.parse(own)
    missing = [*argv[:2], str(tmp_path / "Class3D/job006/run_it020_optimiser.star"), *argv[3:]]
    with pytest.raises(CheckpointError, match="no class count in"):
        RefineCommand.parse(missing)
