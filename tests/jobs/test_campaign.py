"""The campaign's later steps as scripts: golden files, clean shell, one launch line for the GPU
node and the embedded cloud, and the refinement's MPI shape."""

from __future__ import annotations

import difflib
import subprocess

import pytest

from relion_spot.jobs.campaign import (
    RefineStep,
    followers,
    refine_words,
    render_postprocess,
    render_refine,
)
from relion_spot.jobs.class3d import DEFAULT_IMAGE, LOCAL_IMAGE, NodeShape
from relion_spot.jobs.parameters import Class3dParams, JobParameterError

from .test_class3d import _golden

CLASS3D_SID = "7d9f4c1e-0a53-4c55-9b7e-2f7c2b1f6a10"
REFINE_SID = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
STEP = RefineStep(
    class3d=Class3dParams(
        project_dir="/data/lab", particles="particles.star", reference="reference.mrc", K=4,
        particle_diameter=200, ini_high=40,
    ),
    class3d_submission=CLASS3D_SID,
)  # fmt: skip


def _clean_shell(script: str) -> None:
    assert "$$" not in script
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(("gpus", "mode"), [(1, "cloud"), (4, "cloud"), (1, "local")])
def test_the_refinement_script_matches_golden_and_is_clean_shell(gpus: int, mode: str) -> None:
    script = render_refine(NodeShape.for_gpu_count(gpus), STEP, mode=mode)  # type: ignore[arg-type]
    _golden(f"refine3d-gpu{gpus}-{mode}.sbatch", script)
    _clean_shell(script)


@pytest.mark.parametrize("mode", ["cloud", "local"])
def test_the_postprocess_script_matches_golden_and_is_clean_shell(mode: str) -> None:
    script = render_postprocess(
        "/data/lab",
        REFINE_SID,
        campaign_id=CLASS3D_SID,
        mode=mode,  # type: ignore[arg-type]
    )
    _golden(f"postprocess-{mode}.sbatch", script)
    _clean_shell(script)


def test_gpu_node_and_embedded_cloud_differ_only_in_gpu_words_and_image() -> None:
    shape = NodeShape.for_gpu_count(1)
    cloud = render_refine(shape, STEP).splitlines()
    local = render_refine(shape, STEP, mode="local").splitlines()
    diff = [d for d in difflib.ndiff(cloud, local) if d[:2] in ("- ", "+ ")]
    assert diff == [
        "- # relion_spot.jobs.campaign for 1 GPU(s), mode cloud. Placeholders are string.Template",
        "+ # relion_spot.jobs.campaign for 1 GPU(s), mode local. Placeholders are string.Template",
        f"- IMAGE={DEFAULT_IMAGE}",
        f"+ IMAGE={LOCAL_IMAGE}",
        '-   apptainer exec --nv --bind /data,/scratch "$SIF" \\',
        '+   apptainer exec --bind /data,/scratch "$SIF" \\',
        "-   --gpu \\",
    ]


@pytest.mark.parametrize(("gpus", "ranks", "threads"), [(1, 3, 2), (4, 5, 12), (8, 9, 24)])
def test_an_auto_refine_runs_two_half_set_followers_at_least(
    gpus: int, ranks: int, threads: int
) -> None:
    shape = NodeShape.for_gpu_count(gpus)
    words = refine_words(shape, STEP)
    assert words[words.index("mpirun") + 2] == str(ranks)
    assert followers(shape) == ranks - 1
    assert words[words.index("--j") + 1] == str(threads)
    assert "--auto_refine" in words and "--split_random_halves" in words
    assert "--iter" not in words and "--K" not in words


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"refine_class": "worst"}, "refine_class = 'worst' is not valid: 'best' or a class"),
        ({"refine_class": 0}, "refine_class = '0' is not valid"),
        ({"refine_class": True}, "refine_class = 'True' is not valid"),
        ({"local_healpix_order": 1}, "local_healpix_order = '1' is not valid: a whole number"),
        ({"local_healpix_order": 7}, "from the Class3D's healpix_order (2) to 6"),
        ({"refine_class": "²"}, "refine_class = '²' is not valid"),
        (
            {"refine_class": 5},
            "refine_class = 5 is not valid: a class of the campaign's Class3D (K=4)",
        ),
    ],
)
def test_a_bad_refine_step_is_refused_by_name(changes: dict, message: str) -> None:
    values = {"class3d": STEP.class3d, "class3d_submission": CLASS3D_SID, **changes}
    with pytest.raises(JobParameterError, match=None) as refused:
        RefineStep(**values)
    assert message in str(refused.value)


def test_a_class_number_is_kept_as_the_script_passes_it() -> None:
    assert RefineStep(STEP.class3d, CLASS3D_SID, refine_class=3).refine_class == "3"
    assert RefineStep(STEP.class3d, CLASS3D_SID, refine_class="02").refine_class == "2"


@pytest.mark.parametrize("flag", ["--auto_refine", "--split_random_halves"])
def test_a_class3d_cannot_turn_itself_into_a_refinement_by_extra_flags(flag: str) -> None:
    with pytest.raises(JobParameterError, match=f"extra_flags: {flag} may not be given here"):
        Class3dParams(extra_flags=(flag,))
