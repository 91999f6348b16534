"""The real image: a controller and a node container, a job, and a controller restart.

Needs Docker (scripts/setup-docker.sh installs and starts it and builds the images).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from relion_spot.intake.images import ImageChecks
from relion_spot.intake.slurm import SlurmJobs
from relion_spot.jobs.class3d import IMAGE_SCRIPT, LOCAL_IMAGE
from relion_spot.jobs.image import sif_name
from relion_spot.local.embedded import wait_for_controller
from relion_spot.settings import Settings
from relion_spot.slurm.entrypoint import CONTROLLER_ADDR_ENV
from relion_spot.slurm.key import KEY_PARAMETER_ARN_ENV
from relion_spot.slurm.local import (
    CONTAINER_CACHE,
    LOCAL_NODE_IMAGE,
    SLURM_IMAGE,
    LocalSlurm,
    docker,
    sbatch,
    wait_until,
    write_key,
)
from relion_spot.slurm.spec import LOCAL_CLOUD, spec_from_settings
from relion_spot.slurm_key.parameter import ensure, parameter_name
from tests.slurm.show import scontrol_fields

pytestmark = pytest.mark.docker

GPUS = 4
NODE = "gpu-1"
BASE_IMAGE = "relion-spot/debian-base:trixie"
"""The Debian base scripts/setup-docker.sh makes the Slurm images from."""
REPO_ROOT = Path(__file__).resolve().parents[2]
BOTO3_PIN = next(
    line.split("==", 1)[1].strip()
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("boto3==")
)


@pytest.fixture(scope="module")
def cluster(slurm_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """Controller + one GPU node (placeholder GPUs) on a network of their own."""
    work = tmp_path_factory.mktemp("slurm")
    spec = spec_from_settings(Settings(gpus=(GPUS,)), GPUS, slurmd_timeout=30, **LOCAL_CLOUD)
    local = LocalSlurm(
        prefix=f"relion-spot-test-{os.getpid()}",
        spec=spec,
        key_file=write_key(work / "slurm.key"),
        state_dir=work / "state",
    )
    local.remove()
    try:
        local.start_controller()
        wait_for_controller(local)
        local.start_node(NODE, placeholder_gpus=GPUS)
        wait_until(
            lambda: node_state(local, NODE) == "IDLE",
            timeout=60,
            what=lambda: f"{NODE} to register:\n{local.logs(local.node_container(NODE))}",
        )
        yield local
    finally:
        local.remove()


def key_parameter(endpoint: str, cluster_name: str, region: str = "us-east-1") -> str:
    """The cluster's Slurm key made in moto as its stack's custom resource makes it; its ARN."""
    ssm = boto3.client("ssm", region_name=region, endpoint_url=endpoint)
    name = parameter_name(cluster_name)
    ensure(ssm, name)
    return str(ssm.get_parameter(Name=name)["Parameter"]["ARN"])


def node_state(local: LocalSlurm, node: str) -> str:
    """The base state (IDLE, ALLOCATED, DOWN...) without flags such as +CLOUD."""
    state = scontrol_fields(local.run("scontrol", "show", "node", node)).get("State", "")
    return state.split("+", 1)[0]


def job(local: LocalSlurm, job_id: int) -> dict[str, str]:
    return scontrol_fields(local.run("scontrol", "show", "job", str(job_id)))


def wait_job_state(local: LocalSlurm, job_id: int, state: str, timeout: float = 60) -> None:
    wait_until(
        lambda: job(local, job_id).get("JobState") == state,
        timeout=timeout,
        what=lambda: f"job {job_id} to be {state} (now {job(local, job_id).get('JobState')})",
    )


def test_image_carries_no_key_and_fixed_ids(slurm_images: None) -> None:
    out = docker(
        "run", "--rm", "--entrypoint", "sh", SLURM_IMAGE, "-c",
        "ls /etc/slurm/slurm.key /etc/munge/munge.key 2>/dev/null; id -u slurm; id -g slurm;"
        " id -u relion; slurmctld -V; slurmd -V",
    ).stdout.split()  # fmt: skip
    assert out[:3] == ["64030", "64030", "1000"], out
    assert out[3:] == ["slurm-wlm", "24.11.5", "slurm-wlm", "24.11.5"], out


def test_images_carry_the_current_code(slurm_images: None) -> None:
    """A stale build cache must not ship old Slurm code: compare file digests with the repo."""
    listing = (
        "cd /opt/relion-spot && find relion_spot/slurm assets/slurm -type f"
        " ! -path '*/__pycache__/*' -exec sha256sum {} + | sort -k 2"
    )
    expected = "".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(REPO_ROOT)}\n"
        for path in sorted(
            (
                p
                for base in ("relion_spot/slurm", "assets/slurm")
                for p in (REPO_ROOT / base).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ),
            key=lambda p: str(p.relative_to(REPO_ROOT)),
        )
    )
    for image in (SLURM_IMAGE, LOCAL_NODE_IMAGE):
        actual = docker("run", "--rm", "--entrypoint", "sh", image, "-c", listing).stdout
        assert actual == expected, f"{image} is stale"


def test_controller_refuses_to_start_without_a_spec(slurm_images: None) -> None:
    result = docker("run", "--rm", SLURM_IMAGE, "controller", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "relion-spot entrypoint: RELION_SPOT_SLURM_SPEC is empty: it must carry the cluster "
        "spec as JSON"
    ]


def test_batch_job_runs_on_the_node(cluster: LocalSlurm) -> None:
    job_id = sbatch(
        cluster,
        ["--gres=gpu:2", "-o", "/tmp/job-%j.out",
         "--wrap", "echo host=$(hostname) gpus=$CUDA_VISIBLE_DEVICES user=$(id -un)"],
    )  # fmt: skip
    wait_job_state(cluster, job_id, "COMPLETED")
    fields = job(cluster, job_id)
    assert fields["NodeList"] == NODE
    assert fields["ExitCode"] == "0:0"
    output = cluster.run("cat", f"/tmp/job-{job_id}.out", container=cluster.node_container(NODE))
    assert output.split() == [f"host={NODE}", "gpus=0,1", "user=relion"]


def test_relion_5_runs_as_a_job_on_a_local_node_through_apptainer(cluster: LocalSlurm) -> None:
    """The local cloud's node image (the GPU node's, with /scratch): a job, as the job user, makes
    the RELION image's SIF in /containers if need be and runs RELION 5 and its Open MPI from it,
    tcmalloc preloaded by the image."""
    cluster.containers_dir = CONTAINER_CACHE
    cluster.start_node("cpu-1", image=LOCAL_NODE_IMAGE)
    wait_until(
        lambda: node_state(cluster, "cpu-1") == "IDLE",
        timeout=60,
        what=lambda: f"cpu-1 to register:\n{cluster.logs(cluster.node_container('cpu-1'))}",
    )
    run = f'SIF=$({IMAGE_SCRIPT} {LOCAL_IMAGE} /containers); apptainer exec "$SIF"'
    job_id = sbatch(
        cluster,
        ["-p", "cpu", "-o", "/tmp/relion-%j.out", "--wrap",
         f"{run} relion_refine --version | grep version; {run} mpirun --version | head -1;"
         f" {run} sh -c 'echo $LD_PRELOAD; id -un'"],
    )  # fmt: skip
    wait_job_state(cluster, job_id, "COMPLETED", timeout=600)
    output = cluster.run(
        "cat", f"/tmp/relion-{job_id}.out", container=cluster.node_container("cpu-1")
    ).splitlines()
    output = [line for line in output if not line.startswith(("INFO:", "relion-image:"))]
    assert output[0].strip() == "RELION version: 5.0.1", output
    assert output[1].startswith("mpirun (Open MPI) 5."), output
    assert output[2].strip() == "libtcmalloc_minimal.so.4", output
    assert output[3].strip() == "relion", output
    cluster.remove_node("cpu-1")


def test_controller_restart_keeps_jobs_and_the_job_counter(cluster: LocalSlurm) -> None:
    done = sbatch(cluster, ["-o", "/dev/null", "--wrap", "true"])
    wait_job_state(cluster, done, "COMPLETED")
    held = sbatch(cluster, ["--hold", "-o", "/dev/null", "--wrap", "true"])
    running = sbatch(
        cluster,
        ["-o", "/tmp/slow-%j.out", "--wrap", "echo started; sleep 6; echo finished"],
    )
    # Slurm says RUNNING before slurmd has started the script: wait for the script itself, so
    # the stop finds a job under way on its node, not a launch in flight.
    slow_out = f"/tmp/slow-{running}.out"
    wait_until(
        lambda: docker(
            "exec", cluster.node_container(NODE), "cat", slow_out, check=False
        ).stdout.startswith("started"),
        timeout=60,
        what=f"job {running}'s script to start",
    )  # fmt: skip

    started = time.monotonic()
    cluster.stop_controller(timeout=30)
    stop_seconds = time.monotonic() - started
    assert stop_seconds < 15, f"slurmctld took {stop_seconds:.1f} s to stop: SIGTERM not handled"
    assert "Saving all slurm state" in cluster.logs(tail=20)
    assert (cluster.state_dir / "job_state").exists()

    cluster.start_controller()
    wait_for_controller(cluster)
    assert job(cluster, done)["JobState"] == "COMPLETED"
    assert job(cluster, held)["JobState"] == "PENDING"
    assert job(cluster, held)["Reason"] == "JobHeldUser"
    assert job(cluster, running)["JobState"] in ("RUNNING", "COMPLETING", "COMPLETED")
    wait_job_state(cluster, running, "COMPLETED")
    output = cluster.run("cat", slow_out, container=cluster.node_container(NODE))
    assert output.split() == ["started", "finished"]
    after = sbatch(cluster, ["-o", "/dev/null", "--wrap", "true"])
    assert after == running + 1


def test_state_dir_belongs_to_the_slurm_uid(cluster: LocalSlurm) -> None:
    """The EFS access point for StateSaveLocation is owned by 64030: the image must agree."""
    info = cluster.state_dir.stat()
    assert (info.st_uid, info.st_gid) == (64030, 64030)
    owned = subprocess.run(
        ["find", str(cluster.state_dir), "-maxdepth", "1", "-not", "-uid", "64030"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert owned == [], owned


def test_powersave_env_reaches_the_programs(cluster: LocalSlurm) -> None:
    """slurmctld runs power-save programs with its own environment: the saved file fills in."""
    saved = cluster.run("cat", "/etc/relion-spot/powersave.env", user="slurm")
    assert "RELION_SPOT_SLURM_SPEC=" in saved
    assert "RELION_SPOT_SLURM_KEY_FILE=/run/secrets/slurm.key" in saved
    mode = cluster.run("stat", "-c", "%a %U", "/etc/relion-spot/powersave.env", user="root")
    assert mode.split() == ["600", "slurm"]
    # What a power-save wrapper does, in an environment as bare as slurmscriptd gives it.
    loaded = cluster.run(
        "env", "-i", "SLURM_CONF=/etc/slurm/slurm.conf", "sh", "-c",
        "set -a; . /etc/relion-spot/powersave.env; set +a; exec /opt/relion-spot/venv/bin/python"
        " -c 'import os, boto3; from relion_spot.slurm.spec import ClusterSpec, SPEC_ENV;"
        " print(ClusterSpec.from_json(os.environ[SPEC_ENV]).cluster_name, boto3.__version__)'",
        user="slurm",
    )  # fmt: skip
    assert loaded.split() == [cluster.spec.cluster_name, BOTO3_PIN], loaded


FIRST_START_NOISE = ("state file", "Trying backup state save file")
"""What slurmctld reports as errors on its very first start (no state to recover yet)."""


@pytest.mark.parametrize("gpu_count", [1, 4, 8])
def test_cloud_config_is_accepted_by_slurmctld(
    slurm_images: None, tmp_path: Path, gpu_count: int
) -> None:
    """The config the cloud gets (real /dev/nvidia files, node validation on) loads cleanly."""
    settings = Settings(gpus=(1, 4, 8))
    spec = spec_from_settings(settings, gpu_count)
    local = LocalSlurm(
        prefix=f"relion-spot-test-{os.getpid()}-cloud{gpu_count}",
        spec=spec,
        key_file=write_key(tmp_path / "slurm.key"),
        state_dir=tmp_path / "state",
    )
    local.remove()
    try:
        local.start_controller()
        wait_for_controller(local)
        partitions = local.run("sinfo", "-h", "-o", "%P %D %G %f").split("\n")
        types = ",".join(settings.gpu_types[gpu_count])
        assert f"gpu* {settings.max_nodes} gpu:{gpu_count} {types}" in partitions
        assert any(line.startswith(f"cpu {settings.cpu_max_nodes} (null) ") for line in partitions)
        node = scontrol_fields(local.run("scontrol", "show", "node", "gpu-1"))
        assert node["State"] == "IDLE+CLOUD+POWERED_DOWN"
        config = local.run("scontrol", "show", "config")
        assert re.search(rf"^SuspendTime\s+= {settings.node_idle_seconds} sec$", config, re.M)
        assert re.search(rf"^ResumeTimeout\s+= {spec.resume_timeout} sec$", config, re.M)
        # Config problems are reported while slurmctld loads it, before it starts serving (later
        # lines may be about connections, e.g. from the readiness probe above).
        start_up = local.logs(tail=400).split("Running as primary controller", 1)[0]
        errors = [
            line
            for line in start_up.splitlines()
            if "error:" in line and not any(noise in line for noise in FIRST_START_NOISE)
        ]
        assert errors == []
    finally:
        local.remove()


def test_key_comes_from_parameter_store(moto_on_network: tuple[LocalSlurm, str]) -> None:
    """Controller and node each fetch the key (a SecureString) with boto3 at start (moto
    standing in for AWS); a job only runs if both got the same key."""
    local, endpoint = moto_on_network
    arn = key_parameter(endpoint, local.spec.cluster_name)
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        KEY_PARAMETER_ARN_ENV: arn,
    }
    local.start_controller(env=aws)
    wait_for_controller(local)
    local.start_node("gpu-1", placeholder_gpus=1, env=aws)
    wait_until(
        lambda: node_state(local, "gpu-1") == "IDLE",
        timeout=60,
        what=lambda: f"gpu-1 to register:\n{local.logs(local.node_container('gpu-1'))}",
    )
    job_id = sbatch(local, ["-o", "/dev/null", "--wrap", "true"])
    wait_job_state(local, job_id, "COMPLETED")
    probe = docker("exec", local.controller, "ls", "/run/secrets", check=False)
    assert probe.returncode != 0, "a key file is mounted: the parameter was not what was used"


def test_controller_commands_work_before_its_dns_name_resolves(
    slurm_images: None, tmp_path: Path
) -> None:
    """In the cloud the controller's address is a Cloud Map name that a new task may not own yet:
    commands inside the controller (power-save programs, job intake) must reach it regardless."""
    local = LocalSlurm(
        prefix=f"relion-spot-test-{os.getpid()}-dns",
        spec=spec_from_settings(Settings(gpus=(1,)), 1, **LOCAL_CLOUD),
        key_file=write_key(tmp_path / "slurm.key"),
        state_dir=tmp_path / "state",
    )
    name = "ctld.not-registered-yet.invalid"
    local.remove()
    try:
        local.start_controller(env={CONTROLLER_ADDR_ENV: name})
        wait_for_controller(local)
        config = local.run("scontrol", "show", "config")
        assert re.search(rf"^SlurmctldHost\[0\]\s+= {local.controller}\({name}\)$", config, re.M)
        job_id = sbatch(local, ["--hold", "-o", "/dev/null", "--wrap", "true"])
        assert job(local, job_id)["JobState"] == "PENDING"
    finally:
        local.remove()


def test_the_node_image_runs_apptainer_and_took_nothing_else_from_sid(slurm_images: None) -> None:
    """GPU nodes run slurmd from this image and RELION through its Apptainer; apptainer is the
    one package from Debian sid: trixie's libc (and everything Slurm was built on) stays."""
    out = docker(
        "run", "--rm", "--entrypoint", "sh", SLURM_IMAGE, "-c",
        "apptainer --version; cat /etc/relion-spot/apptainer-packages.txt; "
        "dpkg-query -W -f '${Version}' libc6",
    ).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("apptainer version 1.4"), out
    added = dict(line.split(" ", 1) for line in out[1:-1])
    assert "squashfuse" in added and "fuse3" in added
    assert "libc6" not in added, added
    assert not out[-1].startswith("2.43"), f"libc6 {out[-1]} came from sid"


def _private_cache(directory: Path) -> Path:
    """A cache of this test's own, holding the shared one's exported image and its SIF if made
    (hard links: no copy, no rebuild). The test awaits the image's check record, which embedded
    clouds running beside it (the other container lane) write into the shared cache."""
    directory.mkdir()
    directory.chmod(0o1777)
    for name in ("relion-5.0.1-cpu.tar", f"{sif_name(LOCAL_IMAGE)}"):
        if (CONTAINER_CACHE / name).is_file():
            os.link(CONTAINER_CACHE / name, directory / name)
    return directory


def test_an_image_job_on_a_cpu_node_gates_the_gpu_jobs_that_need_its_image(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """The intake's own Slurm code against real Slurm: a GPU job waits for the image job; an
    image that cannot be made fails its job on the CPU node and Slurm cancels the GPU job before
    it runs, which the intake finds and names; a good image is checked once (made first where
    the cache has no SIF of it yet)."""
    cache = _private_cache(tmp_path / "containers")
    cluster.containers_dir = cache
    cluster.start_node("cpu-1", image=LOCAL_NODE_IMAGE)
    wait_until(
        lambda: node_state(cluster, "cpu-1") == "IDLE",
        timeout=60,
        what=lambda: f"cpu-1 to register:\n{cluster.logs(cluster.node_container('cpu-1'))}",
    )
    in_controller = ("docker", "exec", "-i", "-u", "relion", "-w", "/tmp", cluster.controller)
    slurm = SlurmJobs(
        sbatch=(*in_controller, "sbatch"),
        squeue=(*in_controller, "squeue"),
        scancel=(*in_controller, "scancel"),
        env={"PATH": os.environ["PATH"]},
    )
    gpu_script = "#!/bin/bash\n#SBATCH --partition=gpu\n#SBATCH --output=/dev/null\ntrue\n"
    missing = "docker-archive:/containers/relion-spot-test-no-such-image.tar"
    bad = ImageChecks(slurm=slurm, image=missing, mode="local")
    good = ImageChecks(slurm=slurm, image=LOCAL_IMAGE, mode="local", cache_dir=cache)
    checked = cache / f"{good.sif}.checked"
    try:
        bad_check = bad.prerequisite().job_id
        assert bad_check is not None
        doomed = slurm.submit(gpu_script, "bad-image", after=bad_check)
        wait_until(lambda: "bad-image" in bad.failures(), timeout=120, what="the GPU job cancelled")
        assert bad.failures()["bad-image"] == (
            f"Slurm cancelled job {doomed} before any GPU was launched: the RELION image "
            f"{missing} failed its check on the CPU partition (Slurm job {bad_check}; its log is "
            f"relion-image-{bad_check}.out in the image cache)"
        )
        fields = job(cluster, int(doomed))
        assert fields["JobState"] == "CANCELLED" and fields["NodeList"] == "", "never ran"
        assert job(cluster, int(bad_check))["NodeList"] == "cpu-1"

        good_check = good.prerequisite().job_id
        assert good_check is not None
        assert good.prerequisite().job_id == good_check, "one image job per image"
        runs = slurm.submit(gpu_script, "good-image", after=good_check)
        wait_job_state(cluster, int(runs), "COMPLETED", timeout=600)
        assert checked.read_text().startswith("RELION version: 5.0.1")
        assert good.prerequisite().job_id is None, "a checked image costs no job"
    finally:
        cluster.remove_node("cpu-1")


def test_a_cpu_node_builds_an_image_from_a_definition_as_the_job_user(
    cluster: LocalSlurm,
) -> None:
    """What the image job does with the GPU image's definition on AWS, on a small definition: a
    job on a CPU node (started with the bootstrap's CPU-node flags) builds it with
    ``--fakeroot --ignore-subuid`` as the job user, %files and %post included, into a SIF named
    by content digest, and a second job finds it instead of building again."""
    work = CONTAINER_CACHE / f"relion-spot-test-def-{os.getpid()}"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    cluster.containers_dir = CONTAINER_CACHE
    try:
        docker("save", "-o", str(work / "base.tar"), BASE_IMAGE)
        (work / "base.tar").chmod(0o644)
        (work / "copied.txt").write_text("copied by %files\n")
        inside = f"/containers/{work.name}"
        (work / "probe.def").write_text(
            f"Bootstrap: docker-archive\nFrom: {inside}/base.tar\n\n"
            "%files\n    copied.txt /opt/copied.txt\n\n"
            '%post\n    echo "post ran as uid $(id -u)" > /opt/post.txt\n'
        )
        cluster.start_node("cpu-1", image=LOCAL_NODE_IMAGE)
        wait_until(
            lambda: node_state(cluster, "cpu-1") == "IDLE",
            timeout=60,
            what=lambda: f"cpu-1 to register:\n{cluster.logs(cluster.node_container('cpu-1'))}",
        )
        run = (
            f'SIF=$({IMAGE_SCRIPT} def:{inside}/probe.def {inside}) && echo "$SIF" &&'
            ' apptainer --quiet exec "$SIF" cat /opt/copied.txt /opt/post.txt'
        )
        outputs = []
        for attempt in (1, 2):
            job_id = sbatch(cluster, ["-p", "cpu", "-o", f"{inside}/out-{attempt}", "--wrap", run])
            wait_job_state(cluster, job_id, "COMPLETED", timeout=300)
            outputs.append((work / f"out-{attempt}").read_text())
        sif = sorted(work.glob("probe-*.sif"))
        assert len(sif) == 1 and re.fullmatch(r"probe-[0-9a-f]{16}\.sif", sif[0].name), sif
        assert outputs[0].splitlines()[-3:] == [
            f"{inside}/{sif[0].name}",
            "copied by %files",
            "post ran as uid 0",
        ], outputs[0]
        assert "building" in outputs[0] and "building" not in outputs[1], "built once"
    finally:
        cluster.remove_node("cpu-1")
        shutil.rmtree(work, ignore_errors=True)
