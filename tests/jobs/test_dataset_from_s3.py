"""A Class3D whose data is in S3 (``--dataset``), on the embedded cloud: the intake, the node's
credential broker, the copy to the GPU node's scratch and RELION through the jobs' SIF, all as
a GPU node runs them (relion_spot.jobs.dataset)."""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relion_spot.intake.client import submit, wait_for_acceptance
from relion_spot.intake.config import QUEUE_URL_ENV
from relion_spot.intake.table import IntakeTable
from relion_spot.jobs.synthetic import SyntheticParams, class3d_parameters
from relion_spot.local.embedded import INTAKE_TABLE, EmbeddedCloud
from relion_spot.local.job_container import make_synthetic
from relion_spot.relion.synthetic import SyntheticSpec
from relion_spot.settings import Settings
from relion_spot.slurm.local import wait_until
from tests.slurm.conftest import slurm_images
from tests.slurm.test_containers import job

__all__ = ["slurm_images"]

STAGE_BUCKET = "lab-data"


@pytest.fixture(scope="module")
def cloud(slurm_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCloud]:
    with EmbeddedCloud.start(
        prefix=f"relion-spot-test-dataset-{os.getpid()}",
        settings=Settings(gpus=(1,), stage_buckets=(STAGE_BUCKET,)),
        gpu_count=1,
        work_dir=tmp_path_factory.mktemp("dataset"),
    ) as cloud:
        cloud.client("s3").create_bucket(Bucket=STAGE_BUCKET)
        yield cloud


def _data(cloud: EmbeddedCloud) -> Path:
    assert cloud.local.data_dir is not None
    return cloud.local.data_dir


@pytest.mark.parametrize("form", ["prefix", "tarball"])
def test_a_class3d_copies_its_data_set_from_s3_to_scratch_and_writes_only_its_output_to_data(
    cloud: EmbeddedCloud, tmp_path: Path, form: str
) -> None:
    """A Class3D whose ``dataset`` is in a stage bucket (the set's files under a prefix, or a
    tarball): on its GPU node the job user, holding no credentials, gets the stage reader's
    session for that prefix or object from the node's broker, copies the set to the node's
    scratch, and RELION (through the jobs' SIF, as on a GPU node) runs there with only its own
    job directory bound from the project: the particles never reach /data, and the run's
    iterations do."""
    made = make_synthetic(SyntheticSpec(classes=2, particles_per_class=20), tmp_path, "set")
    s3 = cloud.client("s3")
    if form == "tarball":
        tarball = tmp_path / "set.tar.gz"
        with tarfile.open(tarball, "w:gz") as archive:
            archive.add(made, arcname="set")
        s3.put_object(Bucket=STAGE_BUCKET, Key="sets/set.tar.gz", Body=tarball.read_bytes())
        dataset = f"s3://{STAGE_BUCKET}/sets/set.tar.gz"
    else:
        for path in sorted(made.rglob("*")):
            if path.is_file():
                key = f"sets/set/{path.relative_to(made).as_posix()}"
                s3.put_object(Bucket=STAGE_BUCKET, Key=key, Body=path.read_bytes())
        dataset = f"s3://{STAGE_BUCKET}/sets/set/"
    parameters = class3d_parameters(
        SyntheticParams(project_dir=f"/data/from-s3-{form}", classes=2, particles_per_class=20), 2
    )
    table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
    submission = submit(
        cloud.client("sqs"),
        table,
        cloud.env[QUEUE_URL_ENV],
        parameters={**parameters, "dataset": dataset},
        user="lab",
        template="class3d",
    )
    job_id = int(wait_for_acceptance(table, submission.submission_id, timeout=120))
    wait_until(
        lambda: job(cloud.local, job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
        timeout=600,
        what=lambda: f"class3d {job_id} to end ({job(cloud.local, job_id)})",
    )
    project = _data(cloud) / f"from-s3-{form}"
    output = (project / f"class3d-{job_id}.out").read_text()
    assert job(cloud.local, job_id)["JobState"] == "COMPLETED", output[-3000:]
    assert re.search(r"^(staging|dataset): verified: ", output, re.M), output[-3000:]
    (job_dir,) = (project / "Class3D").iterdir()
    assert (job_dir / "run_it002_model.star").is_file()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert not (project / "particles.star").exists()
    assert not list(project.rglob("*.mrcs")), "no particle stack on the shared file system"
    node = job(cloud.local, job_id)["NodeList"]
    container = cloud.local.node_container(node)
    assert node.startswith("gpu-")
    access = "dataset" if form == "prefix" else "read"
    said = cloud.local.logs(container)
    assert f"job {job_id} (uid 1000): S3 {access} of {dataset} until" in said
