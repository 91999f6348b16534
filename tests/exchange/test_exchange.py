"""Results out, over the broker's socket and S3 (moto): the export job's program writes only where
the broker says, the lab's download checks everything the manifest claims, and a manifest or a
file that is not what an export wrote is refused by name with nothing written outside the
folder."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
import starfile
from moto import mock_aws

from relion_spot.exchange.cli import main as exchange_main
from relion_spot.exchange.download import PARTIAL_SUFFIX, DownloadError, Progress, pull
from relion_spot.exchange.manifest import NAME as MANIFEST
from relion_spot.exchange.manifest import (
    Entry,
    Manifest,
    ManifestError,
    check_result_path,
    parse,
)
from relion_spot.exchange.upload import UploadError, folder_files, folder_manifest, upload
from relion_spot.jobs.job_dir import CLAIM_FILE
from tests.node.test_stage_credentials import EXCHANGE, EXCHANGE_ROLE, SID, Node, _accepted

POST = "7b2e9c30-4d5f-4e70-8b12-c3d4e5f6a7b8"
SELECT = "8c3fad41-5e60-4f81-9c23-d4e5f6a7b8c9"
PREFIX = f"out/{SID}/"


def _claim(directory: Path, submission: str, job_type: str) -> None:
    directory.mkdir(parents=True)
    claim = {"cluster": "c", "slurm_job_id": "9", "submission_id": submission}
    claim |= {"created": time.time(), "job_type": job_type}
    (directory / CLAIM_FILE).write_text(json.dumps(claim))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a PostProcess and a Select job, as their programs leave them."""
    root = tmp_path / "data" / "lab"
    post = root / "PostProcess" / "job003"
    _claim(post, POST, "PostProcess")
    for name in ("postprocess.mrc", "postprocess_masked.mrc", "mask.mrc"):
        (post / name).write_bytes(bytes(range(256)) * 400 + name.encode())
    fsc = pd.DataFrame(
        {
            "rlnResolution": [0.0, 0.05, 0.1],
            "rlnFourierShellCorrelationCorrected": [1.0, 0.5, 0.0],
            "rlnFourierShellCorrelationUnmaskedMaps": [1.0, 0.4, 0.0],
        }
    )
    starfile.write({"general": {"rlnFinalResolution": 14.5}, "fsc": fsc}, post / "postprocess.star")
    (post / "run.out").write_text("postprocess: done\n")
    (post / "logfile.pdf").write_bytes(b"%PDF")
    (post / "postprocess_fsc.eps").write_bytes(b"%!PS")
    select = root / "Select" / "job002"
    _claim(select, SELECT, "Select")
    (select / "particles.star").write_text("data_particles\n")
    return root


@contextlib.contextmanager
def _cpu_node(tmp_path: Path, *, template: str, parameters: str) -> Iterator[tuple[Node, Any]]:
    """A CPU node whose broker approves the job the record names, and the exchange bucket."""
    with mock_aws():
        node = Node(tmp_path / "node", role="", exchange_role=EXCHANGE_ROLE, bucket=EXCHANGE)
        node.record = _accepted(template=template, parameters=parameters)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=EXCHANGE)
        try:
            yield node, s3
        finally:
            node.stop()


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[tuple[Node, Any]]:
    """A CPU node whose broker approves an export."""
    with _cpu_node(tmp_path, template="export", parameters="{}") as pair:
        yield pair


def _export(node: Node, project: Path, *submissions: str) -> int:
    words = ["export", "--project-dir", str(project), "--s3-credentials", str(node.socket)]
    for submission in submissions:
        words += ["--submission", submission]
    return exchange_main(words)


def test_an_export_writes_where_the_broker_says_and_comes_back_byte_for_byte(
    exchange: tuple[Node, Any], project: Path, tmp_path: Path
) -> None:
    node, s3 = exchange
    assert _export(node, project, POST, SELECT) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=EXCHANGE)["Contents"]}
    assert all(k.startswith(PREFIX) for k in keys)
    assert f"{PREFIX}{MANIFEST}" in keys
    assert f"{PREFIX}PostProcess/job003/fsc.png" in keys
    assert f"{PREFIX}PostProcess/job003/logfile.pdf" in keys, "RELION's own FSC and Guinier plots"
    assert f"{PREFIX}PostProcess/job003/postprocess_fsc.eps" not in keys, "only what a lab opens"
    assert not any(k.endswith(CLAIM_FILE) for k in keys)

    folder = tmp_path / "pulled"
    got = pull(s3, EXCHANGE, PREFIX, folder)
    assert got.manifest.jobs == ((POST, "PostProcess/job003"), (SELECT, "Select/job002"))
    assert len(got.downloaded) == len(got.manifest.files) == len(keys) - 1
    for entry in got.manifest.files:
        if entry.path.endswith(".png"):
            assert (folder / entry.path).read_bytes().startswith(b"\x89PNG")
        else:
            assert (folder / entry.path).read_bytes() == (project / entry.path).read_bytes()
    assert not list(folder.rglob(f"*{PARTIAL_SUFFIX}"))

    again = pull(s3, EXCHANGE, PREFIX, folder)
    assert again.downloaded == () and len(again.kept) == len(got.manifest.files)


def test_a_file_changed_in_the_exchange_is_refused_and_a_damaged_local_copy_is_replaced(
    exchange: tuple[Node, Any], project: Path, tmp_path: Path
) -> None:
    node, s3 = exchange
    assert _export(node, project, POST) == 0
    folder = tmp_path / "pulled"
    pull(s3, EXCHANGE, PREFIX, folder)
    mask = folder / "PostProcess/job003/mask.mrc"
    mask.write_bytes(b"half a file")
    assert [e.path for e in pull(s3, EXCHANGE, PREFIX, folder).downloaded] == [
        "PostProcess/job003/mask.mrc"
    ]
    assert mask.read_bytes() == (project / "PostProcess/job003/mask.mrc").read_bytes()

    key = f"{PREFIX}PostProcess/job003/mask.mrc"
    original = (project / "PostProcess/job003/mask.mrc").read_bytes()
    s3.put_object(Bucket=EXCHANGE, Key=key, Body=b"evil" * 10_000_000)
    mask.unlink()
    with pytest.raises(DownloadError, match="the exchange holds 40000000 bytes, the manifest says"):
        pull(s3, EXCHANGE, PREFIX, folder)
    s3.put_object(Bucket=EXCHANGE, Key=key, Body=b"X" + original[1:])
    with pytest.raises(DownloadError, match="does not match the manifest's size and sha256"):
        pull(s3, EXCHANGE, PREFIX, folder)
    assert not mask.exists() and not list(folder.rglob(f"*{PARTIAL_SUFFIX}"))


def test_a_job_without_results_or_an_unknown_submission_fails_the_export_by_name(
    exchange: tuple[Node, Any], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, s3 = exchange
    (project / "PostProcess/job003/postprocess.mrc").unlink()
    assert _export(node, project, POST) == 1
    assert "has written no postprocess.mrc yet" in capsys.readouterr().err
    unknown = "9d40be52-6f71-4092-ad34-e5f6a7b8c9d0"
    assert _export(node, project, unknown) == 1
    assert f"no job directory of {project} is claimed by {unknown}" in capsys.readouterr().err
    assert "Contents" not in s3.list_objects_v2(Bucket=EXCHANGE), "nothing half-written"


def test_an_export_the_intake_did_not_approve_gets_no_session_and_writes_nothing(
    exchange: tuple[Node, Any], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, s3 = exchange
    node.record = _accepted(template="select")
    assert _export(node, project, POST) == 1
    assert "is a select job, not stage, class3d, export or import" in capsys.readouterr().err
    assert node.sts.policies == [] and "Contents" not in s3.list_objects_v2(Bucket=EXCHANGE)


def _file(path: str = "a", size: Any = 1, digest: str = "0" * 64) -> dict[str, Any]:
    return {"path": path, "bytes": size, "sha256": digest}


def _manifest(**change: Any) -> bytes:
    good = Manifest(
        "s", "lab", (("a", "Class3D/job001"),), (Entry("Class3D/job001/x", 1, "0" * 64),)
    )
    raw = json.loads(good.to_json())
    raw.update(change)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "the manifest is not JSON"),
        (_manifest(version=2), "not a version 1 manifest"),
        (_manifest(files={"a": 1}), "a list of at most 100000 files"),
        (_manifest(files=[_file("../../.bashrc")]), "'../../.bashrc' is not accepted"),
        (_manifest(files=[_file("/etc/passwd")]), "'/etc/passwd' is not accepted"),
        (_manifest(files=[_file("a//b")]), "'a//b' is not accepted"),
        (_manifest(files=[_file("a b")]), "'a b' is not accepted"),
        (_manifest(files=[_file("a;b")]), "'a;b' is not accepted"),
        (_manifest(files=[_file("é")]), "'é' is not accepted"),
        (_manifest(files=[_file(size=-1)]), "bytes '-1' is not"),
        (_manifest(files=[_file(size=True)]), "bytes 'True' is not"),
        (_manifest(files=[_file(digest="x")]), "sha256 'x' is not 64 hex"),
        (_manifest(files=[_file("a")] * 2), "a is listed twice"),
        (_manifest(files=[_file("a")] * 100_001), "at most 100000"),
        (_manifest(jobs=[{"submission": "s", "directory": ".."}]), "'..' is not accepted"),
    ],
    ids=[
        "not-json", "version", "files-not-list", "dot-dot", "absolute", "empty-part", "space",
        "semicolon", "not-ascii",
        "negative", "bool", "digest", "twice", "too-many", "job-dir",
    ],
)  # fmt: skip
def test_a_manifest_an_export_did_not_write_is_refused_by_name(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as refused:
        parse(data)
    assert message in str(refused.value)


def test_a_hostile_manifest_in_the_exchange_writes_nothing_anywhere(
    tmp_path: Path,
) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=EXCHANGE)
        body = _manifest(files=[_file("../escape")])
        s3.put_object(Bucket=EXCHANGE, Key=f"{PREFIX}{MANIFEST}", Body=body)
        with pytest.raises(DownloadError, match=r"'\.\./escape' is not accepted"):
            pull(s3, EXCHANGE, PREFIX, tmp_path / "pulled")
        with pytest.raises(DownloadError, match="the export has not finished"):
            pull(s3, EXCHANGE, "out/other/", tmp_path / "pulled")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "pulled").exists()


class Counted(Progress):
    def __init__(self) -> None:
        self.total = self.advanced = 0
        self.files: list[str] = []

    def begin(self, total_bytes: int, files: int) -> None:
        self.total = total_bytes

    def file(self, entry: Entry) -> None:
        self.files.append(entry.path)

    def advance(self, count: int) -> None:
        self.advanced += count


def test_the_progress_bar_counts_every_byte_it_downloads(
    exchange: tuple[Node, Any], project: Path, tmp_path: Path
) -> None:
    node, s3 = exchange
    assert _export(node, project, POST) == 0
    counted = Counted()
    got = pull(s3, EXCHANGE, PREFIX, tmp_path / "pulled", progress=counted)
    assert counted.total == counted.advanced == got.manifest.total_bytes > 300_000
    assert counted.files == [e.path for e in got.manifest.files]


def test_the_controller_refuses_an_export_of_a_job_that_never_started_before_any_node(
    project: Path,
) -> None:
    from relion_spot.intake.prepare import JobPreparer, JobRejected
    from relion_spot.jobs.export import ExportParams

    prepare = JobPreparer(instance_types=("g5.xlarge",), data_root=project.parent)
    accepted = prepare(ExportParams("/data/lab", (POST, SELECT)))
    assert accepted.note == (
        "preflight ok: exporting PostProcess/job003, Select/job002 on the CPU partition"
    )
    assert not accepted.needs_image and "relion_spot.exchange export" in accepted.script
    unknown = "9d40be52-6f71-4092-ad34-e5f6a7b8c9d0"
    with pytest.raises(
        JobRejected, match=f"no job directory of /data/lab is claimed by .*{unknown}"
    ):
        prepare(ExportParams("/data/lab", (unknown,)))


# --- stage: the lab's folder in ---------------------------------------------------------------


@pytest.fixture
def importing(tmp_path: Path) -> Iterator[tuple[Node, Any]]:
    """A CPU node whose broker approves an import."""
    with _cpu_node(tmp_path, template="import", parameters='{"project_dir": "/data/p"}') as pair:
        yield pair


def _lab_folder(root: Path) -> Path:
    lab = root / "lab"
    (lab / "Particles").mkdir(parents=True)
    (lab / "Particles" / "particles.star").write_text("data_particles\n")
    (lab / "Particles" / "stack_0001.mrcs").write_bytes(bytes(range(256)) * 2000)
    (lab / "reference.mrc").write_bytes(b"\x00" * 70_000)
    return lab


def _upload(s3: Any, lab: Path) -> Manifest:
    manifest, pairs = folder_manifest(lab, submission=SID, project="/data/p")
    return upload(s3, EXCHANGE, f"in/{SID}/", manifest, pairs).manifest


def _import(node: Node, project: Path, manifest: Manifest | bytes) -> list[str]:
    body = manifest if isinstance(manifest, bytes) else manifest.to_json().encode()
    return [
        "import", "--project-dir", str(project), "--s3-credentials", str(node.socket),
        "--manifest-sha256", hashlib.sha256(body).hexdigest(),
    ]  # fmt: skip


def test_a_staged_folder_arrives_whole_and_a_requeued_import_keeps_what_is_there(
    importing: tuple[Node, Any], tmp_path: Path
) -> None:
    node, s3 = importing
    lab = _lab_folder(tmp_path)
    sent = _upload(s3, lab)
    assert {e.path for e in sent.files} == {
        "Particles/particles.star", "Particles/stack_0001.mrcs", "reference.mrc",
    }  # fmt: skip
    project = tmp_path / "data" / "p"
    words = _import(node, project, sent)
    assert exchange_main(words) == 0
    (policy,) = node.sts.policies
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{EXCHANGE}/in/{SID}/*",
        }
    ]
    for entry in sent.files:
        assert (project / entry.path).read_bytes() == (lab / entry.path).read_bytes()
    assert exchange_main(words) == 0, "a requeued attempt finds everything whole"

    again = folder_manifest(lab, submission=SID, project="/data/p")
    assert upload(s3, EXCHANGE, f"in/{SID}/", *again).sent == (), "nothing is sent twice"


def test_an_import_never_replaces_a_file_that_differs(
    importing: tuple[Node, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, s3 = importing
    sent = _upload(s3, _lab_folder(tmp_path))
    project = tmp_path / "data" / "p"
    project.mkdir(parents=True)
    (project / "reference.mrc").write_bytes(b"the lab's other map")
    assert exchange_main(_import(node, project, sent)) == 1
    assert "reference.mrc is already in" in capsys.readouterr().err
    assert (project / "reference.mrc").read_bytes() == b"the lab's other map"


def test_a_hidden_path_in_an_uploaded_manifest_is_refused_before_anything_is_written(
    importing: tuple[Node, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A claim file planted through an upload would hand a job directory to someone else."""
    node, s3 = importing
    body = _manifest(files=[_file("Class3D/job001/.relion-spot-job.json")])
    s3.put_object(Bucket=EXCHANGE, Key=f"in/{SID}/{MANIFEST}", Body=body)
    project = tmp_path / "data" / "p"
    assert exchange_main(_import(node, project, body)) == 1
    assert "may start with '.'" in capsys.readouterr().err
    assert not project.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda lab: (lab / "a b.star").write_text("x"), "'a b.star' is not accepted"),
        (lambda lab: (lab / "é.mrc").write_text("x"), "'é.mrc' is not accepted"),
        (lambda lab: (lab / "loop").symlink_to(lab), "loop leads back into the folder"),
        (lambda lab: (lab / "dangling.mrc").symlink_to(lab / "nothing"), "dangling.mrc is not a"),
    ],
    ids=["space", "not-ascii", "link-loop", "dangling-link"],
)
def test_a_folder_the_cluster_would_refuse_is_refused_here_by_name(
    tmp_path: Path, make: Any, message: str
) -> None:
    lab = _lab_folder(tmp_path)
    make(lab)
    with pytest.raises(UploadError, match=message):
        folder_files(lab)


@pytest.mark.parametrize(
    "path",
    [".bashrc", ".ssh/authorized_keys", "Class3D/job001/.hidden", "Class3D/job001/x.part",
     "Class3D/job001/a/b", "notes.txt", "class3d/job001/x", "Class3D/job1/x"],
)  # fmt: skip
def test_a_pulled_manifest_may_name_only_what_an_export_writes(tmp_path: Path, path: str) -> None:
    """A job that got hold of an export's session could forge its manifest: a dotfile or a
    path elsewhere must never land in the lab's folder."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=EXCHANGE)
        body = _manifest(files=[_file(path)])
        s3.put_object(Bucket=EXCHANGE, Key=f"{PREFIX}{MANIFEST}", Body=body)
        s3.put_object(Bucket=EXCHANGE, Key=f"{PREFIX}{path}", Body=b"x")
        with pytest.raises(DownloadError, match="is not one an export writes"):
            pull(s3, EXCHANGE, PREFIX, tmp_path / "pulled", paths=check_result_path)
    assert not (tmp_path / "pulled").exists()


def test_a_lab_folder_stages_as_a_lab_has_it_links_followed_and_hidden_names_left_out(
    tmp_path: Path,
) -> None:
    """macOS's .DS_Store, RELION's .Nodes/, a Movies directory that is a link, names with + @ :"""
    lab = _lab_folder(tmp_path)
    (lab / ".DS_Store").write_bytes(b"x")
    (lab / ".Nodes").mkdir()
    (lab / ".Nodes" / "x").write_text("x")
    movies = tmp_path / "elsewhere" / "Movies"
    movies.mkdir(parents=True)
    (movies / "FoilHole_1+2@3:4.mrc").write_bytes(b"m")
    (lab / "Movies").symlink_to(movies)
    (lab / "ref_link.mrc").symlink_to(lab / "reference.mrc")
    found = folder_files(lab)
    assert [name for name, _ in found.files] == [
        "Movies/FoilHole_1+2@3:4.mrc", "Particles/particles.star", "Particles/stack_0001.mrcs",
        "ref_link.mrc", "reference.mrc",
    ]  # fmt: skip
    assert sorted(found.hidden) == [".DS_Store", ".Nodes/"]


def test_an_import_never_writes_into_a_cluster_jobs_directory_or_a_relion_control_file(
    importing: tuple[Node, Any], project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A staged RELION_JOB_ABORT_NOW would stop a running job; a staged run_it999_* would be
    taken for its newest iteration."""
    node, s3 = importing
    for path, message in (
        ("PostProcess/job003/run_it999_model.star", "is a job directory of the cluster's"),
        ("Particles/RELION_JOB_ABORT_NOW", "RELION's control files are a job's own"),
    ):
        body = _manifest(files=[_file(path)])
        s3.put_object(Bucket=EXCHANGE, Key=f"in/{SID}/{MANIFEST}", Body=body)
        assert exchange_main(_import(node, project, body)) == 1
        assert message in capsys.readouterr().err
    assert not (project / "PostProcess/job003/run_it999_model.star").exists()


def test_a_manifest_replaced_after_the_upload_is_refused(
    importing: tuple[Node, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any member may write under in/: the submission names the manifest the lab uploaded."""
    node, s3 = importing
    sent = _upload(s3, _lab_folder(tmp_path))
    words = _import(node, tmp_path / "data" / "p", sent)
    forged = dataclasses.replace(sent, files=sent.files[:1])
    s3.put_object(Bucket=EXCHANGE, Key=f"in/{SID}/{MANIFEST}", Body=forged.to_json().encode())
    assert exchange_main(words) == 1
    assert "is not the manifest that was submitted" in capsys.readouterr().err
    assert not (tmp_path / "data" / "p").exists()
