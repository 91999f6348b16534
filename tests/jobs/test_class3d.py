"""The Class3D job template: golden files for 1/4/8 GPUs and local mode, valid shell, the
benchmark flags verbatim, and every bad parameter refused with a message naming it."""

from __future__ import annotations

import difflib
import shlex
import subprocess
from pathlib import Path

import pytest

from relion_spot.constructs.job_template import Class3dJobTemplate
from relion_spot.jobs import Class3dParams, JobParameterError, NodeShape, from_mapping, render
from relion_spot.jobs.class3d import command_words, threads_and_pool
from relion_spot.relion.checkpoint import RefineCommand
from relion_spot.relion.preflight import parse_refine_args
from relion_spot.settings import Settings

from ..slurm import golden

IMAGE_SCRIPT_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "relion-image.sh"

BENCHMARK = (
    "--i Particles/shiny_2sets.star --ref emd_2660.map:mrc --firstiter_cc --ini_high 60 "
    "--ctf --iter 25 --tau2_fudge 4 --particle_diameter 360 --K 6 "
    "--flatten_solvent --zero_mask --oversampling 1 --healpix_order 2 --offset_range 5 "
    "--offset_step 2 --sym C1 --norm --scale --random_seed 0"
)


def _golden(name: str, text: str) -> None:
    """Golden files live in tests/jobs/golden/ (RELION_SPOT_UPDATE_GOLDEN=1 rewrites them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(golden, "GOLDEN_DIR", Path(__file__).resolve().parent / "golden")
        golden.check_golden(name, text)


@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_cloud_script_matches_golden(gpus: int) -> None:
    _golden(f"class3d-gpu{gpus}.sbatch", render(gpus))


@pytest.mark.parametrize("gpus", [1, 4])
def test_local_script_matches_golden(gpus: int) -> None:
    _golden(f"class3d-gpu{gpus}-local.sbatch", render(gpus, mode="local"))


@pytest.mark.parametrize("mode", ["cloud", "local"])
@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_rendered_script_is_valid_bash(gpus: int, mode: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(render(gpus, mode=mode))  # type: ignore[arg-type]
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout


def _words(gpus: int, mode: str = "cloud", params: Class3dParams | None = None) -> list[str]:
    shape = NodeShape.for_gpu_count(gpus)
    return command_words(shape, params or Class3dParams(), mode=mode)  # type: ignore[arg-type]


def test_defaults_are_the_benchmark_verbatim() -> None:
    words = _words(1)
    program = words.index("relion_refine")
    assert " ".join(words[program + 3 :]).startswith(BENCHMARK + " --pool 30 --j 4 --gpu")
    assert words[program + 1 : program + 3] == ["--o", "$JOB_DIR/run"]


@pytest.mark.parametrize("gpus", [1, 4, 8])
@pytest.mark.parametrize("mode", ["cloud", "local"])
def test_every_rendered_flag_is_one_relion_knows(gpus: int, mode: str) -> None:
    words = _words(gpus, mode)
    program = next(i for i, w in enumerate(words) if w.startswith("relion_refine"))
    parse_refine_args(words[program + 1 :])


def test_launch_line_by_gpu_count() -> None:
    one = _words(1)
    assert one[:6] == ["apptainer", "exec", "--nv", "--bind", "/data,/scratch", one[5]]
    assert "mpirun" not in one and "relion_refine" in one
    assert "--dont_combine_weights_via_disc" not in one
    for gpus in (4, 8):
        words = _words(gpus)
        mpirun = words.index("mpirun")
        assert words[mpirun : mpirun + 12] == [
            "mpirun", "-n", str(gpus + 1), "--mca", "plm", "^slurm", "--mca", "ras", "^slurm",
            "--bind-to", "none", "--oversubscribe",
        ]  # fmt: skip
        assert words[mpirun + 12] == "relion_refine_mpi"
        assert words.count("--gpu") == 1
        assert "--dont_combine_weights_via_disc" in words


def test_a_dataset_in_s3_is_copied_to_scratch_and_relion_runs_there() -> None:
    """Golden files for both modes; the embedded cloud's differs from the GPU node's as any."""
    params = from_mapping(
        {
            "preset": "benchmark",
            "dataset": "s3://lab-data/sets/relion_benchmark.tar.gz",
            "dataset_sha256": "0123456789abcdef" * 4,
        }
    )
    _golden("class3d-gpu1-dataset.sbatch", render(1, params))
    _golden("class3d-gpu1-dataset-local.sbatch", render(1, params, mode="local"))
    plain = render(1).splitlines()
    from_s3 = render(1, params).splitlines()
    added = [d[2:] for d in difflib.ndiff(plain, from_s3) if d.startswith("+ ")]
    removed = [d[2:] for d in difflib.ndiff(plain, from_s3) if d.startswith("- ")]
    assert removed == [
        '  apptainer exec --nv --bind /data,/scratch "$SIF" \\',
        "  --scratch_dir /scratch \\",
    ]
    assert added[-1] == (
        '  apptainer exec --nv --bind /scratch --bind "$PWD/$JOB_DIR:$DATASET/$JOB_DIR" '
        '--pwd "$DATASET" "$SIF" \\'
    ), "of /data, RELION sees its own job directory (and Apptainer's default mount of the cwd)"
    prefix = from_mapping({"preset": "benchmark", "dataset": "s3://lab-data/sets/bench/"})
    _golden("class3d-gpu1-dataset-prefix.sbatch", render(1, prefix))
    assert 'mkdir -p "$DATASET/$JOB_DIR"' in added


def test_a_dataset_is_a_tarball_or_a_prefix_of_the_sets_files() -> None:
    for dataset in ("s3://lab-data/sets/bench/", "s3://lab-data/relion_benchmark.tar"):
        assert from_mapping({"preset": "benchmark", "dataset": dataset}).dataset == dataset


def test_a_dataset_cannot_continue_a_run() -> None:
    """A continuation reads the run it continues from /data, which a job on scratch cannot."""
    with pytest.raises(JobParameterError, match="dataset and continue_from exclude each other"):
        Class3dParams(dataset="s3://lab/a.tar", continue_from="Class3D/job005:3", iter=30)
    given = {"continue_from": "Class3D/job005", "project_dir": "/data/p", "iter": 30}
    with pytest.raises(JobParameterError, match="parameter dataset cannot change when continuing"):
        from_mapping({**given, "dataset": "s3://lab/a.tar"})


@pytest.mark.parametrize("gpus", [1, 4])
def test_local_and_cloud_scripts_differ_only_in_gpu_words_and_image(gpus: int) -> None:
    """One launch line: the embedded cloud runs what a GPU node runs, without --nv and --gpu,
    from its own image (golden files hold both; this pins the difference itself)."""
    cloud = render(gpus, mode="cloud").splitlines()
    local = render(gpus, mode="local").splitlines()
    diff = [d for d in difflib.ndiff(cloud, local) if d[:2] in ("- ", "+ ")]
    header = "# mode {}. Placeholders are string.Template names; every other dollar is doubled."
    assert diff == [
        "- " + header.format("cloud"),
        "+ " + header.format("local"),
        "- IMAGE=def:relion/relion.def:relion/cuda12.args",
        "+ IMAGE=docker-archive:/containers/relion-5.0.1-cpu.tar",
        '-   apptainer exec --nv --bind /data,/scratch "$SIF" \\',
        '+   apptainer exec --bind /data,/scratch "$SIF" \\',
        "-   --gpu \\",
    ], diff
    assert [w for w in _words(gpus) if w not in _words(gpus, "local")] == ["--nv", "--gpu"]


@pytest.mark.parametrize(("gpus", "threads", "pool"), [(1, 4, 30), (4, 12, 60), (8, 24, 120)])
def test_threads_and_pool_follow_the_node(gpus: int, threads: int, pool: int) -> None:
    shape = NodeShape.for_gpu_count(gpus)
    assert threads_and_pool(shape, Class3dParams()) == (threads, pool)
    assert threads_and_pool(shape, Class3dParams(j=6, pool=30)) == (6, 30)


def test_sizing_uses_the_smallest_type_of_the_group() -> None:
    shape = NodeShape.for_types(["g5.2xlarge", "g5.xlarge"])
    assert shape == NodeShape(gpus=1, vcpus=4)
    with pytest.raises(JobParameterError, match="same GPU count"):
        NodeShape.for_types(["g5.xlarge", "g5.12xlarge"])


def test_settings_pick_the_cluster_and_its_types() -> None:
    settings = Settings(gpus=(1, 4), gpu_types={1: ("g5.2xlarge",), 4: ("g5.24xlarge",)})
    assert "--j 8 \\" in render(settings, gpus=1)
    assert "--j 24 \\" in render(settings, gpus=4)
    with pytest.raises(JobParameterError, match="GPU count 8 has no cluster"):
        render(settings, gpus=8)
    with pytest.raises(JobParameterError, match="GPU count 2 is not valid: one of 1, 4, 8"):
        render(2)


def test_the_checkpoint_runner_reads_the_rendered_command() -> None:
    words = [w.replace("$JOB_DIR", "Class3D/job7") for w in _words(4)]
    command = RefineCommand.parse(words)
    assert command.program == "relion_refine_mpi"
    assert str(command.root) == "Class3D/job7/run"
    assert (command.classes, command.iterations) == (6, 25)
    carried = command.continuation(12)
    assert carried[: carried.index("relion_refine_mpi")] == command.launcher
    for flag in ("--gpu", "--scratch_dir", "--pipeline_control", "--dont_combine_weights_via_disc"):
        assert flag in carried


def test_rendered_script_runs_the_checkpoint_with_the_command() -> None:
    text = render(4)
    launch = "exec /opt/relion-spot/venv/bin/python -I -m relion_spot.relion.checkpoint run -- "
    command_text = text.split(launch + "\\\n", 1)[1]
    words = shlex.split(command_text.replace("\\\n", " ").replace("$JOB_DIR", "J"))
    assert words == [w.replace("$JOB_DIR", "J") for w in _words(4)]


def test_image_is_made_once_under_a_lock_and_renamed_into_place() -> None:
    for mode in ("cloud", "local"):
        assert 'SIF=$(/opt/relion-spot/assets/slurm/relion-image.sh "$IMAGE" /containers)' in (
            render(1, mode=mode)  # type: ignore[arg-type]
        )
    script = IMAGE_SCRIPT_PATH.read_text()
    assert "flock 9" in script and 'mv -f "$tmp" "$sif"' in script
    assert script.index("apptainer build") < script.index('mv -f "$tmp" "$sif"')


def test_image_build_under_lock_is_single_and_atomic(tmp_path: Path) -> None:
    """The job's own image script with a stand-in apptainer: 3 concurrent jobs, 1 build."""
    cache = tmp_path / "cache"
    cache.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text(
        f'#!/bin/bash\necho "$*" >> {tmp_path}/builds\nprintf part > "$3"\nsleep 0.5\n'
        'printf image >> "$3"\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    image = "docker-archive:/containers/relion-5.0.1-cpu.tar"
    jobs = [
        subprocess.Popen(
            ["bash", "-c", f'sif=$("$0" {image} {cache}) && cat "$sif"', str(IMAGE_SCRIPT_PATH)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [job.communicate(timeout=30)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    assert outputs == ["partimage"] * 3
    (build,) = (tmp_path / "builds").read_text().splitlines()
    assert build.startswith("build --disable-cache ") and build.endswith(f" {image}")
    assert [p.name for p in cache.glob("*.sif")] == [
        "docker-archive__containers_relion-5.0.1-cpu.tar.sif"
    ]
    assert not list(cache.glob("*.partial.*"))


def test_construct_holds_and_writes_the_script(tmp_path: Path) -> None:
    from aws_cdk import App, Stack

    settings = Settings(gpus=(1, 4))
    stack = Stack(App(), "S")
    template = Class3dJobTemplate(stack, "Class3d", settings=settings, gpu_count=4)
    assert template.script == render(settings, gpus=4)
    path = template.write(tmp_path)
    assert path.name == "relion-spot-gpu4-class3d.sbatch"
    assert path.read_text() == template.script
    with pytest.raises(JobParameterError, match="K = 0"):
        Class3dJobTemplate(stack, "Bad", settings=settings, gpu_count=1, params=Class3dParams(K=0))


# ---- bad parameters -----------------------------------------------------------------------

BAD = [
    ({"K": 0}, "parameter K = 0 is not valid: a whole number from 1 to 50"),
    ({"K": 51}, "parameter K = 51 is not valid: a whole number from 1 to 50"),
    ({"K": 2.5}, "parameter K = 2.5 is not valid: a whole number"),
    ({"K": "six"}, "parameter K = 'six' is not valid: a whole number from 1 to 50"),
    ({"iter": 0}, "parameter iter = 0 is not valid: a whole number from 1 to 200"),
    ({"iter": 201}, "parameter iter = 201 is not valid"),
    ({"healpix_order": 7}, "parameter healpix_order = 7 is not valid: a whole number from 0 to 6"),
    ({"tau2_fudge": 0}, "parameter tau2_fudge = 0 is not valid: a number from 0.1 to 100"),
    ({"particle_diameter": -1}, "parameter particle_diameter = -1 is not valid"),
    ({"ini_high": 0}, "parameter ini_high = 0 is not valid"),
    ({"offset_range": 101}, "parameter offset_range = 101 is not valid"),
    ({"offset_step": 6}, "parameter offset_step = 6 is not valid: at most offset_range"),
    ({"random_seed": -1}, "parameter random_seed = -1 is not valid"),
    ({"pool": 0}, "parameter pool = 0 is not valid"),
    ({"j": 0}, "parameter j = 0 is not valid"),
    ({"oversampling": 4}, "parameter oversampling = 4 is not valid"),
    ({"sym": "C0"}, "parameter sym = 'C0' is not valid: a point group"),
    ({"sym": "c1"}, "parameter sym = 'c1' is not valid"),
    ({"ctf": "maybe"}, "parameter ctf = 'maybe' is not valid: true or false"),
    ({"particles": "my particles.star"}, "parameter particles = 'my particles.star'"),
    ({"project_dir": "relative"}, "parameter project_dir = 'relative' is not valid: an absolute"),
    ({"output_dir": "../elsewhere"}, "parameter output_dir = '../elsewhere' is not valid"),
    ({"output_dir": "Class3D/sub"}, "parameter output_dir = 'Class3D/sub' is not valid"),
    ({"scratch_dir": "/scratch;rm"}, "parameter scratch_dir = '/scratch;rm' is not valid"),
    ({"Kk": 2}, "no job parameter 'Kk'; did you mean K?"),
    ({"healpix": 2}, "no job parameter 'healpix'; did you mean healpix_order?"),
    ({"extra_flags": "--maxsig 500 --pda 2"}, "does not know the flag --pda"),
    ({"extra_flags": "--maxsigg 500"}, "does not know the flag --maxsigg (did you mean --maxsig?)"),
    ({"extra_flags": "--maxsig"}, "--maxsig needs a value"),
    ({"extra_flags": "--K 3"}, "--K may not be given here: use the parameter K"),
    ({"extra_flags": "--o elsewhere"}, "--o may not be given here: the job template sets it"),
    ({"extra_flags": "--gpu"}, "--gpu may not be given here"),
    ({"extra_flags": "--continue x_optimiser.star"}, "--continue may not be given here"),
    ({"extra_flags": ["--solvent_mask2", "a;b"]}, "cannot carry safely"),
    ({"dataset": "https://x.org/a.tar"}, "parameter dataset = 'https://x.org/a.tar' is not valid"),
    ({"dataset": "s3://b/a b.tar"}, "is not valid: s3://bucket/key of a tarball"),
    ({"dataset": "s3://b/../a.tar"}, "parameter dataset = 's3://b/../a.tar' is not valid"),
    ({"dataset": "s3://lab/"}, "parameter dataset = 's3://lab/' is not valid"),
    ({"dataset": "s3://lab/a//b/"}, "no empty, . or .. parts"),
    ({"dataset": "s3://lab/set/", "dataset_sha256": "a" * 64}, "dataset names a prefix"),
    ({"dataset": "s3://lab/" + "k" * 700}, "at most 700 characters"),
    ({"dataset": "s3://lab/a.tar", "dataset_sha256": "ABC"}, "dataset_sha256 = 'ABC' is not"),
    ({"dataset_sha256": "a" * 64}, "dataset_sha256 is given without dataset"),
    ({"dataset": "s3://l/*", "--dataset": "s3://l/a.tar"}, "parameter dataset is given twice"),
    ({"i": "a.star", "particles": "b.star"}, "parameter particles is given twice"),
]


@pytest.mark.parametrize(("given", "message"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_parameter_is_refused_with_one_clear_message(given: dict, message: str) -> None:
    with pytest.raises(JobParameterError) as caught:
        from_mapping(given)
    assert message in str(caught.value)


def test_text_values_are_coerced_and_extra_flags_kept() -> None:
    params = from_mapping(
        {
            "preset": "benchmark",
            "K": "4",
            "iter": "10",
            "tau2_fudge": "2.5",
            "ctf": "false",
            "extra_flags": "--maxsig 500",
        }
    )
    assert (params.K, params.iter, params.tau2_fudge, params.ctf) == (4, 10, 2.5, False)
    words = _words(1, params=params)
    assert "--ctf" not in words and words[words.index("--maxsig") + 1] == "500"
    assert words[words.index("--tau2_fudge") + 1] == "2.5"


def test_a_mask_and_skip_align_are_named_parameters_and_blush_a_flag_relion_5_knows() -> None:
    """RELION 5's own flags (the list is read from its source, scripts/relion-refine-flags.py):
    each named parameter renders its flag; given again as an extra flag it is refused by name."""
    params = from_mapping(
        {"preset": "benchmark", "solvent_mask": "Masks/soft.mrc", "skip_align": "true"}
    )
    args = params.refine_args()
    assert args[args.index("--solvent_mask") + 1] == "Masks/soft.mrc"
    assert "--skip_align" in args
    assert "--skip_align" not in Class3dParams().refine_args()
    assert (
        from_mapping({"preset": "benchmark", "extra_flags": ["--blush"]}).refine_args()[-1]
        == "--blush"
    )
    for given in (["--solvent_mask", "m.mrc"], ["--skip_align"]):
        with pytest.raises(JobParameterError, match=f"{given[0]} may not be given here: use the"):
            from_mapping({"extra_flags": given})
    for bad in ("../mask.mrc", "/data/mask.mrc", "-mask.mrc"):
        with pytest.raises(JobParameterError, match=f"parameter solvent_mask = '{bad}'"):
            from_mapping({"solvent_mask": bad})


def test_the_flag_list_is_relion_5s_parser_calls() -> None:
    import importlib.util
    import json
    from importlib import resources

    spec = importlib.util.spec_from_file_location(
        "refine_flags", Path(__file__).parents[2] / "scripts" / "relion-refine-flags.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = """
        do_gpu = parser.checkOption("--gpu", "Use gpus");
        gpu_ids = parser.getOption("--gpu", "Device ids", "default");
        do_blush = parser.checkOption("--blush", "Blush");
        fn_mask = parser.getOption("--solvent_mask", "Mask", "None");
        if (checkParameter(argc, argv, "--pipeline_control"))
            name = getParameter(argc, argv, "--pipeline_control");
        if (checkParameter(argc, argv, "--version")) print();
    """
    assert script.flags_of([source]) == {
        "--blush": "switch",
        "--gpu": "optional-value",
        "--pipeline_control": "value",
        "--solvent_mask": "value",
        "--version": "switch",
    }
    shipped = json.loads(
        resources.files("relion_spot.relion").joinpath("relion_refine_flags.json").read_text()
    )
    assert shipped["relion_version"] == "5.0.1"
    assert {"--blush", "--skip_align", "--solvent_mask", "--continue"} <= set(shipped["flags"])
